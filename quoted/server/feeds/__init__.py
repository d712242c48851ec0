"""Where prices come from. Each feed is an ``IService`` that writes new quotes into the store and
hands the moved ones to the hub."""
