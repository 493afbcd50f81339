-- wrk script for benches/load.sh: replays a URL list (or makes every request a new variant)
-- and measures latency per cache class (X-Cache HIT vs MISS), which wrk alone cannot.
--
--   wrk -t N -c N -s benches/load.lua URL -- list FILE NAME
--   wrk -t N -c N -s benches/load.lua URL -- miss SALT NAME
--   wrk -t N -c N -s benches/load.lua URL -- pagemiss SALT NAME   (300-899 px wide misses)
--   LOAD_ACCEPT=... sets the Accept header of every request.
--
-- Needs one connection per thread (-t = -c): each thread then alternates request() and
-- response(), so the time between the two is that request's latency. LuaJIT's ffi gives a
-- monotonic microsecond clock. Prints one tab-separated ROW line for load.sh's table.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } load_timespec;
int clock_gettime(int clk_id, load_timespec *tp);
]]
local ts = ffi.new("load_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

-- Browsers and bots: the User-Agent must never split the cache.
local agents = {
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
  "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
  "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
  "Googlebot-Image/1.0",
  "curl/8.5.0",
}

-- main state: give each thread its index; keep them for done()
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

-- thread state
local paths, mode, salt
name = nil -- global: done() reads it from a thread
local i, t0 = 0, nil
hits, misses, other = 0, 0, 0
hh, mh = {}, {} -- latency histograms (log buckets) for hits and misses
codes = {}      -- non-2xx/304 responses by status

function init(args)
  mode, name = args[1], args[3] or args[1]
  accept = os.getenv("LOAD_ACCEPT") -- e.g. Chrome's, for format=auto runs
  if mode == "list" then
    paths = {}
    for line in io.lines(args[2]) do
      if line:match("^/") then table.insert(paths, line) end
    end
    if #paths == 0 then error("no paths in " .. args[2]) end
    -- threads start at different points of the list
    i = math.floor(#paths * tid / 64)
  else
    salt = tonumber(args[2]) or 0
  end
end

function request()
  i = i + 1
  local path
  if mode == "list" then
    path = paths[(i - 1) % #paths + 1]
  elseif mode == "pagemiss" then
    -- every request a new page-sized variant (300-899 px wide): the formats bench's misses
    local k = i * 64 + tid
    path = "/image/kite.jpg?size=" .. (300 + k % 600) .. "x" .. (200 + salt + math.floor(k / 600))
  else
    -- every request a new variant: distinct (width, height) per thread and request
    local k = i * 64 + tid
    path = "/image/kite.jpg?size=" .. (200 + k % 3800) .. "x" .. (100 + salt + math.floor(k / 3800))
  end
  t0 = now_us()
  local h = { ["User-Agent"] = agents[(i + tid) % #agents + 1] }
  if accept then h["Accept"] = accept end
  return wrk.format("GET", path, h)
end

local LOG_BASE = math.log(1.02) -- 2% buckets
local function record(h, us)
  local b = math.floor(math.log(math.max(us, 1)) / LOG_BASE)
  h[b] = (h[b] or 0) + 1
end

function response(status, headers, body)
  local us = now_us() - (t0 or now_us())
  local xc = headers["x-cache"] or headers["X-Cache"]
  if status >= 300 and status ~= 304 then
    codes[status] = (codes[status] or 0) + 1
  elseif xc == "HIT" then
    hits = hits + 1
    record(hh, us)
  elseif xc == "MISS" then
    misses = misses + 1
    record(mh, us)
  else
    other = other + 1
  end
end

local function merge(dst, src)
  for k, v in pairs(src or {}) do dst[k] = (dst[k] or 0) + v end
end

local function pct(h, p)
  local keys, total = {}, 0
  for k, v in pairs(h) do table.insert(keys, k); total = total + v end
  if total == 0 then return "-" end
  table.sort(keys)
  local want, acc = math.ceil(total * p), 0
  for _, k in ipairs(keys) do
    acc = acc + h[k]
    if acc >= want then return string.format("%.2f", math.exp((k + 0.5) * LOG_BASE) / 1000) end
  end
end

function done(summary, latency, requests)
  local H, M, C = {}, {}, {}
  local nh, nm, no = 0, 0, 0
  for _, t in ipairs(threads) do
    merge(H, t:get("hh")); merge(M, t:get("mh")); merge(C, t:get("codes"))
    nh = nh + (t:get("hits") or 0); nm = nm + (t:get("misses") or 0); no = no + (t:get("other") or 0)
  end
  local e = summary.errors
  local errs, parts = e.connect + e.read + e.write + e.timeout, {}
  for code, n in pairs(C) do
    errs = errs + n
    table.insert(parts, code .. "x" .. n)
  end
  if e.connect + e.read + e.write + e.timeout > 0 then
    table.insert(parts, string.format("sock:c%d/r%d/w%d/t%d", e.connect, e.read, e.write, e.timeout))
  end
  local name = threads[1]:get("name")
  local served = nh + nm + no
  local ratio = served > 0 and string.format("%.1f%%", 100 * nh / served) or "-"
  local rps = summary.requests / (summary.duration / 1e6)
  print(table.concat({ "ROW", name, #threads, string.format("%.0f", rps), nh, pct(H, 0.5), pct(H, 0.99), pct(H, 0.999),
    nm, pct(M, 0.5), pct(M, 0.99), pct(M, 0.999), errs .. (#parts > 0 and (" (" .. table.concat(parts, ",") .. ")") or ""),
    ratio }, "\t"))
end
