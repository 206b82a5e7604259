// Renders the server's OpenAPI document as a readable page, with no network access beyond this server.

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const code = (s) => esc(s).replace(/`([^`]+)`/g, "<code>$1</code>");

function resolve(spec, schema) {
  let s = schema || {};
  while (s.$ref) s = s.$ref.split("/").slice(1).reduce((o, k) => o[k], spec);
  return s;
}

function typeOf(spec, schema) {
  const s = resolve(spec, schema);
  if (schema?.$ref) return schema.$ref.split("/").pop();
  if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(" | ");
  if (s.type === "array") return `array of ${typeOf(spec, s.items)}`;
  return s.type || "object";
}

function fields(spec, schema) {
  const s = resolve(spec, schema);
  const target = s.type === "array" ? resolve(spec, s.items) : s;
  const props = Object.entries(target.properties || {});
  if (!props.length) return "";
  const required = new Set(target.required || []);
  const rows = props.map(([name, p]) => `<tr><td><code>${esc(name)}</code>${required.has(name) ? "" : " (optional)"}` +
    `</td><td>${esc(typeOf(spec, p))}</td><td>${code(p.description || resolve(spec, p).description || "")}</td></tr>`);
  return `<table><tr><th>field</th><th>type</th><th>meaning</th></tr>${rows.join("")}</table>`;
}

function example(path, method) {
  const url = `${location.origin}${path.replace("{unit}", "relu1:17").replace("{index}", "0")}`;
  if (method !== "post") return `curl ${url}`;
  return `curl -X POST ${url} -H 'content-type: application/json' \\\n     -d '{"units": ["relu1:0-9", "relu2:17"]}'`;
}

function operation(spec, path, method, op) {
  const params = (op.parameters || []).map((p) => `<tr><td><code>${esc(p.name)}</code> (${esc(p.in)})</td>` +
    `<td>${esc(typeOf(spec, p.schema))}</td><td>${code(p.description || "")}</td></tr>`).join("");
  const body = op.requestBody?.content?.["application/json"]?.schema;
  const ok = op.responses?.["200"]?.content || {};
  const okSchema = ok["application/json"]?.schema;
  const errors = Object.entries(op.responses || {}).filter(([c]) => c !== "200")
    .map(([c, r]) => `<tr><td>${esc(c)}</td><td colspan="2">${esc(r.description)}</td></tr>`).join("");
  return `<section class="op"><h2><span class="method ${method}">${method.toUpperCase()}</span> <code>${esc(path)}</code>` +
    ` — ${esc(op.summary || "")}</h2><p>${code(op.description || "")}</p>` +
    (params ? `<h3>parameters</h3><table>${params}</table>` : "") +
    (body ? `<h3>request body (JSON): ${esc(typeOf(spec, body))}</h3>${fields(spec, body)}` : "") +
    (okSchema ? `<h3>response 200: ${esc(typeOf(spec, okSchema))}</h3>${fields(spec, okSchema)}`
      : Object.keys(ok).length ? `<h3>response 200: ${esc(Object.keys(ok).join(", "))}</h3>` : "") +
    (errors ? `<h3>errors (JSON <code>{"error": "..."}</code>)</h3><table>${errors}</table>` : "") +
    `<h3>example</h3><pre>${esc(example(path, method))}</pre></section>`;
}

async function start() {
  const spec = await (await fetch("/openapi.json")).json();
  const ops = [];
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) ops.push(operation(spec, path, method, op));
  }
  document.getElementById("api").innerHTML = `<h1>${esc(spec.info.title)} ${esc(spec.info.version)}</h1>` +
    `<div class="intro">${code(spec.info.description)}</div>${ops.join("")}`;
  document.title = `${spec.info.title}: API`;
}

start().catch((err) => { document.getElementById("api").textContent = `cannot read /openapi.json: ${err.message}`; });
