-- wrk script: replays pre-built requests from a file (one per line: path \t headers-json \t body),
-- or builds unique TradrAPI batches on the fly; prints a JSON summary with p50/p99/p99.9.
local reqs = {}
local n = 0
local mode = "file"
local batch = 500
local secret = ""
local counter = 0
local prefix = tostring(os.time())

local function parse_headers(text)
  local headers = {}
  for key, value in text:gmatch('"([^"]+)":"([^"]*)"') do headers[key] = value end
  return headers
end

init = function(args)
  mode = args[1]
  if mode == "file" then
    for line in io.lines(args[2]) do
      local path, headers, body = line:match("([^\t]+)\t([^\t]+)\t(.*)")
      n = n + 1
      reqs[n] = wrk.format("POST", path, parse_headers(headers), body)
    end
  else -- "tradrapi": the credential is a static header, so batches can be unique and unsigned
    secret = args[2]
    batch = tonumber(args[3])
    prefix = prefix .. tostring(math.random(1000000))
  end
end

local i = 0
request = function()
  if mode == "file" then
    i = i + 1
    if i > n then i = 1 end
    return reqs[i]
  end
  counter = counter + 1
  local parts = {}
  for k = 1, batch do
    parts[k] = '{"brandId":1,"serverId":2,"accountId":' .. (k % 97) .. ',"eventType":"open_position",'
      .. '"platform":"MT5","payload":{"id":"' .. prefix .. '-' .. counter .. '-' .. k
      .. '","symbol":"EURUSD","lots":1,"openPrice":1.0851}}'
  end
  local body = '{"payload":[' .. table.concat(parts, ",") .. '],"count":' .. batch .. ',"attempts":1}'
  return wrk.format("POST", "/hooks/tradrapi", {["x-webhook-secret"] = secret, ["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    '\nBENCH {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
