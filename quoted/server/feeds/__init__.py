"""Where prices come from. Each feed is an ``IService`` that writes new quotes into the store
(``store.apply_prices``) and hands the moved ones to the hub."""

__all__ = [
    "simulator",
]
