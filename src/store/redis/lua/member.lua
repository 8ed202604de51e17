-- Shared by the room scripts: reading a member value.
--
-- A member value is "<epoch> <node>\n<meta JSON>" (the epoch a decimal
-- string, so Lua's doubles never round it; node ids have no control
-- characters, see `server.node_id`). Values written by releases before
-- envelope v3 are JSON {"e":"<epoch>","n":"<node>","m":<meta>} in that fixed
-- layout (serde's field order); they are read by position too, never with
-- cjson. `member_conn` returns the epoch and the node, or nothing for a value
-- in neither layout. No script ever reads the meta.
local function member_conn(v)
  if string.sub(v, 1, 1) == '{' then
    local e, p = string.match(v, '^{"e":"(%d+)","n":"()')
    if not e then return nil end
    local q = string.find(v, '","m":', p, true)
    if not q then return nil end
    local n = string.sub(v, p, q - 1)
    if string.find(n, '\\', 1, true) then n = string.gsub(n, '\\(.)', '%1') end
    return e, n
  end
  local sp = string.find(v, ' ', 1, true)
  if not sp then return nil end
  local nl = string.find(v, '\n', sp + 1, true)
  if not nl then return nil end
  return string.sub(v, 1, sp - 1), string.sub(v, sp + 1, nl - 1)
end
