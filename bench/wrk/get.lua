-- wrk script: GET /inventory/{product_id} over a range of products.
-- usage: wrk ... -s bench/wrk/get.lua URL -- RUN_ID FIRST_PRODUCT PRODUCTS [TOKEN]
-- TOKEN: sent as a bearer token when given (GetStock is public; Envoy does not check it).
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  first = tonumber(args[2])
  count = tonumber(args[3])
  headers = {}
  if args[4] and args[4] ~= "" then
    headers["Authorization"] = "Bearer " .. args[4]
  end
  math.randomseed(os.time() + tid * 7919)
end

function request()
  return wrk.format("GET", "/inventory/" .. (first + math.random(0, count - 1)), headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
