-- wrk script for the protected targets: one GET per request, rotating over the subscribers' tokens.
--   wrk ... -s bench/wrk/tokens.lua http://127.0.0.1:PORT/paid -- <tokens file> <Host>
-- The requests are formatted once in init(), so the per-request Lua cost is a table lookup.
local requests = {}
local n, i = 0, 0

function init(args)
  local host = args[2]
  for token in io.lines(args[1]) do
    if #token > 0 then
      n = n + 1
      requests[n] = wrk.format("GET", wrk.path, {["Host"] = host, ["Authorization"] = "Bearer " .. token})
    end
  end
  if n == 0 then error("no tokens in " .. args[1]) end
end

function request()
  i = i % n + 1
  return requests[i]
end
