// The official MCP TypeScript SDK's OAuth client against the gateway, as a desktop app runs it:
// a loopback callback server, an OAuthClientProvider kept in memory, StreamableHTTPClientTransport.
// Prints "AUTHORIZE <url>" for the browser step (driven by the Python test), then
// "RESULT <json>" once it called a paid tool, refreshed its token and called again.
// Usage: node mcp_oauth_client.mjs <MCP URL>
import http from "node:http";
import crypto from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const serverUrl = new URL(process.argv[2]);
let arrived;
const callback = new Promise((resolve) => { arrived = resolve; });
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  if (url.pathname !== "/callback") { res.writeHead(404).end(); return; }
  res.writeHead(200, { "content-type": "text/plain" }).end("You can close this window.");
  arrived(Object.fromEntries(url.searchParams));
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const redirectUrl = `http://127.0.0.1:${server.address().port}/callback`;
const state = crypto.randomBytes(16).toString("hex");
const saved = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return { client_name: "TypeScript SDK client", redirect_uris: [redirectUrl], response_types: ["code"],
             grant_types: ["authorization_code", "refresh_token"], token_endpoint_auth_method: "none" };
  },
  state() { return state; },
  clientInformation() { return saved.client; },
  saveClientInformation(info) { saved.client = info; },
  tokens() { return saved.tokens; },
  saveTokens(tokens) { saved.tokens = tokens; },
  redirectToAuthorization(url) { console.log("AUTHORIZE " + url.href); },
  saveCodeVerifier(verifier) { saved.verifier = verifier; },
  codeVerifier() { return saved.verifier; },
};
const connect = async () => {
  const client = new Client({ name: "gateway-test", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(serverUrl, { authProvider: provider });
  await client.connect(transport);
  return client;
};

try {
  let transport = new StreamableHTTPClientTransport(serverUrl, { authProvider: provider });
  try {
    await new Client({ name: "gateway-test", version: "1.0.0" }).connect(transport);
    throw new Error("connected without authorizing");
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
  }
  const query = await callback;
  if (query.state !== state) throw new Error("state mismatch in the callback");
  await transport.finishAuth(query.code);
  let client = await connect();
  const tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const search = await client.callTool({ name: "search", arguments: { query: "blue highway" } });
  await client.close();
  const first = saved.tokens;
  // An access token the gateway no longer accepts: the SDK refreshes it with the refresh token.
  saved.tokens = { ...first, access_token: "expired.access.token" };
  client = await connect();
  const count = await client.callTool({ name: "count_songs", arguments: {} });
  await client.close();
  console.log("RESULT " + JSON.stringify({
    tools, found: search.structuredContent.result.length, count: count.structuredContent,
    client_id: saved.client.client_id, iss: query.iss,
    rotated: saved.tokens.refresh_token !== first.refresh_token && saved.tokens.access_token !== first.access_token,
  }));
} catch (error) {
  console.log("FAILED " + (error && error.stack ? error.stack : String(error)));
  process.exitCode = 1;
} finally {
  server.close();
}
