#ifndef PYHOT_CONFIG_RELOAD_H
#define PYHOT_CONFIG_RELOAD_H

#include "server.h"

/* Re-reads the configuration from the same command line (argc entries of argv, borrowed:
 * its file, then its overrides) and applies in place into *server->config what can change
 * in a running daemon: settle_ms, log_level, timeouts, strategy, import and the watch roots
 * (added ones are watched, put on sys.path and imported with import = all; removed ones
 * stop being watched). The interpreter is never restarted; what needs a restart is logged
 * and listed in the config_reloaded event. An invalid configuration changes nothing: it is
 * logged and evented as config_error. Tells systemd RELOADING=1 then READY=1
 * (systemd.service(5), Type=notify-reload). */
void config_reload(struct server *server, int argc, char **argv);

#endif
