-- Rooms::delete_room. KEYS: room record, room members. ARGV: room.
-- Removes the room, record and members, from both indexes and from its
-- members' nodes' room sets. Returns {0} when there was no such room, else
-- {1, {peer, member value, ...}}: the memberships removed.
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
return {1, remove_room(ARGV[1])}
