// A minimal RFC 6902 applier for what quoted sends: add, replace and remove on JSON Pointers
// (RFC 6901, "~1" is "/" and "~0" is "~"). applyPatch changes doc in place and returns the set
// of symbols touched (the token after /quotes/), or throws PatchError: the document has lost
// state and the caller must resynchronize.

export class PatchError extends Error {}

export function parsePointer(path) {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new PatchError(`not a JSON Pointer: ${path}`);
  return path.slice(1).split("/").map((t) => t.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function container(doc, tokens, path) {
  let node = doc;
  for (const t of tokens) {
    if (node === null || typeof node !== "object" || !Object.hasOwn(node, t)) {
      throw new PatchError(`no member at ${path}`);
    }
    node = node[t];
  }
  if (node === null || typeof node !== "object" || Array.isArray(node)) {
    throw new PatchError(`the parent of ${path} is not an object`);
  }
  return node;
}

export function applyOperation(doc, op) {
  const tokens = parsePointer(op.path);
  if (tokens.length === 0) throw new PatchError("operations on the whole document are not used");
  const key = tokens[tokens.length - 1];
  const parent = container(doc, tokens.slice(0, -1), op.path);
  switch (op.op) {
    case "add":
      parent[key] = op.value;
      break;
    case "replace":
      if (!Object.hasOwn(parent, key)) throw new PatchError(`replace of absent ${op.path}`);
      parent[key] = op.value;
      break;
    case "remove":
      if (!Object.hasOwn(parent, key)) throw new PatchError(`remove of absent ${op.path}`);
      delete parent[key];
      break;
    default:
      throw new PatchError(`unsupported operation ${op.op}`);
  }
  return tokens;
}

export function applyPatch(doc, operations) {
  const changed = new Set();
  for (const op of operations) {
    const before = op.path === "/quotes" && doc.quotes ? Object.keys(doc.quotes) : [];
    const tokens = applyOperation(doc, op);
    if (tokens[0] !== "quotes") continue;
    if (tokens.length >= 2) changed.add(tokens[1]);
    else for (const s of [...before, ...Object.keys(doc.quotes ?? {})]) changed.add(s);
  }
  return changed;
}
