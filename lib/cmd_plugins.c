/* plugins: the plugins of the plugin directories as the daemon knows them after each one's
 * last run (lib/plugins.c keeps them; docs/plugins.md, docs/protocol.md "plugins"). */
#include "commands.h"
#include "plugins.h"
#include "protocol.h"
#include "server.h"

void cmd_plugins(struct server *server, uint64_t client, const struct protocol_request *req) {
    json_t *result = server->plugins ? plugins_list(server->plugins)
                                     : json_pack("{s:[], s:[], s:s, s:n}", "plugins", "dirs",
                                                 "pattern", server->config->plugin_pattern, "api");
    if (result)
        server_reply_ok(server, client, req->id, result);
    else
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
}
