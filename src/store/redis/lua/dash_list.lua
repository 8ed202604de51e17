-- DashRegistry::dash_list and dash_clients. ARGV: now (unix ms). Returns
-- the list (dash_reply) and the count over every node.
local r = dash_reply(ARGV[1])
table.insert(r, dash_clients_total())
return r
