-- Native gRPC requests, checked at the edge before a backend sees them (blueprint/edge:
-- Envoy's Lua filter, enabled only on the routes of unary RPCs and health, after
-- the buffer filter, so the whole request is here).
--
-- grpcio answers the cases below itself, before any Python runs, with INTERNAL and
-- its own text ("Compression bit set but no encoding configured", "Error parsing
-- 'x-foo-bin' metadata", ...), or waits for a message that never comes. Here each
-- gets INVALID_ARGUMENT (an unknown grpc-encoding UNIMPLEMENTED, with the ones
-- accepted) and a plain message, at once. A corrupt gzip/deflate message can only
-- be found by inflating it (LuaJIT has no zlib): the backend's "Decompression
-- failed" answer is translated on the way back (envoy_on_response).
--
-- MESH_MESSAGE_LIMIT and MESH_LIMIT_TEXT are set by the generator (the edge's
-- gRPC message limit).

local ENCODINGS = { identity = true, gzip = true, deflate = true }
local ACCEPTED = "identity, deflate, gzip"
local NAMESPACE = "mesh.grpc"

local function refuse(handle, code, message, extra)
  local headers = {
    [":status"] = "200",
    ["content-type"] = "application/grpc",
    ["grpc-status"] = code,
    ["grpc-message"] = message,
  }
  if extra then
    for name, value in pairs(extra) do
      headers[name] = value
    end
  end
  handle:respond(headers, "")
end

-- gRPC -bin metadata is base64, padded or not.
local function is_base64(value)
  local stripped = value:gsub("=+$", "")
  return not stripped:find("[^A-Za-z0-9+/]") and #stripped % 4 ~= 1
end

local function framing_problem(body)
  local size = body and body:length() or 0
  if size < 5 then
    return "the request stream ended without a complete message"
  end
  local prefix = body:getBytes(0, 5)
  local declared = ((prefix:byte(2) * 256 + prefix:byte(3)) * 256 + prefix:byte(4)) * 256
    + prefix:byte(5)
  if declared > MESH_MESSAGE_LIMIT then
    return "the request message is larger than " .. MESH_LIMIT_TEXT
  end
  if size < declared + 5 then
    return "the request stream ended without a complete message"
  end
  if size > declared + 5 then
    return "a unary call takes exactly one request message"
  end
  return nil, prefix:byte(1)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = (headers:get("content-type") or ""):lower()
  if content_type:sub(1, 16) ~= "application/grpc" then
    return -- a REST call on a gRPC path: the transcoder's
  end
  -- application/grpc+proto and application/grpc;charset=... are gRPC too (grpcio takes
  -- them); the transcoder passes only the bare form through untouched.
  if content_type ~= "application/grpc" then
    headers:replace("content-type", "application/grpc")
  end
  local encoding = headers:get("grpc-encoding")
  if encoding ~= nil and not ENCODINGS[encoding] then
    return refuse(
      handle,
      "12",
      "grpc-encoding " .. encoding .. " is not supported; use one of " .. ACCEPTED,
      { ["grpc-accept-encoding"] = ACCEPTED }
    )
  end
  for name, value in pairs(headers) do
    if name:sub(-4) == "-bin" and not is_base64(value) then
      return refuse(handle, "3", "the metadata " .. name .. " is not valid base64")
    end
  end
  local problem, flag = framing_problem(handle:body())
  if problem then
    return refuse(handle, "3", problem)
  end
  if flag == 1 then
    if encoding == nil or encoding == "identity" then
      return refuse(handle, "3", "the request message is marked compressed but no grpc-encoding says how")
    end
    handle:streamInfo():dynamicMetadata():set(NAMESPACE, "encoding", encoding)
  elseif flag ~= 0 then
    return refuse(handle, "3", "the request message has an invalid compression flag")
  end
end

function envoy_on_response(handle)
  local compressed = handle:streamInfo():dynamicMetadata():get(NAMESPACE)
  if compressed == nil then
    return
  end
  local headers = handle:headers()
  local message = headers:get("grpc-message") or ""
  if headers:get("grpc-status") == "13" and message:find("^Decompression failed") then
    headers:replace("grpc-status", "3")
    headers:replace(
      "grpc-message",
      "the request message is not valid " .. compressed.encoding .. " data"
    )
  end
end
