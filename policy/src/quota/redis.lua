-- meshlens quotas on Redis: every hit of one check in one atomic call, on Redis' own clock so
-- replicas agree on windows whatever their clocks say.
-- KEYS[i]: a quota key. ARGV: four numbers per key: algorithm (0 fixed window, 1 GCRA), hits,
-- requests per unit, unit in seconds.
-- Returns per key {a, b}: fixed window {count after the hits, window start in s};
-- GCRA {stored theoretical arrival time before the hits, in us, 0 if none}. And last, now in us.
-- Fixed window key: <key>_<window start>, expiring with its window (envoyproxy/ratelimit's form).
-- GCRA key: <key>, holding the arrival time in us, expiring when it passes.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 4
  local algorithm = tonumber(ARGV[b + 1])
  local hits = tonumber(ARGV[b + 2])
  local limit = tonumber(ARGV[b + 3])
  local unit = tonumber(ARGV[b + 4])
  if algorithm == 0 then
    local now_s = math.floor(now / 1000000)
    local start = now_s - (now_s % unit)
    local k = key .. '_' .. start
    local after = redis.call('INCRBY', k, hits)
    redis.call('EXPIRE', k, unit)
    out[i] = {after, start}
  else
    local period = unit * 1000000
    local interval = math.max(1, math.floor(period / math.max(limit, 1)))
    local tat = tonumber(redis.call('GET', key) or '0')
    local base = math.max(tat, now)
    local new_tat = base + math.max(hits, 1) * interval
    if limit > 0 and hits > 0 and new_tat - now <= period then
      redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
    end
    out[i] = {string.format('%d', tat), 0}
  end
end
out[#KEYS + 1] = string.format('%d', now)
return out
