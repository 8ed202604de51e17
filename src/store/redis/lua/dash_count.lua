-- DashRegistry::dash_set_count. ARGV: node, generation, count, now (unix
-- ms). Returns the count over every node.
dash_set_count(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return dash_clients_total()
