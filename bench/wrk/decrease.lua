-- wrk script: POST /inventory/decrease with a unique order id per request.
-- usage: wrk ... -s bench/wrk/decrease.lua URL -- RUN_ID FIRST_PRODUCT PRODUCTS [TOKEN]
-- TOKEN: a bearer token with scope orders:write (Envoy refuses the call without).
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  run_id = args[1]
  first = tonumber(args[2])
  count = tonumber(args[3])
  counter = 0
  headers = {["Content-Type"] = "application/json"}
  if args[4] and args[4] ~= "" then
    headers["Authorization"] = "Bearer " .. args[4]
  end
  math.randomseed(os.time() + tid * 7919)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"product_id":%d,"quantity":1,"order_id":"%s-%d-%d"}',
    first + math.random(0, count - 1), run_id, tid, counter)
  return wrk.format("POST", "/inventory/decrease", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
