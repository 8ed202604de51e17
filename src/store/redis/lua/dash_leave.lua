-- DashRegistry::dash_leave. ARGV: node, room, user, join entry, now (unix
-- ms). Returns the list (dash_reply), changed or not.
if dash_remove(ARGV[2], ARGV[3]) then dash_bump(ARGV[5]) end
redis.call('SREM', k_dash_node_joins(ARGV[1]), ARGV[4])
return dash_reply(ARGV[5])
