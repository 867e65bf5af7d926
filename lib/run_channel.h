#ifndef PYHOT_RUN_CHANNEL_H
#define PYHOT_RUN_CHANNEL_H

#include <stdint.h>
#include <stddef.h>

#include <jansson.h>
#include <uv.h>

/*
 * Runs: scripts in the warm interpreter (docs/run.md is the user's version).
 *
 * A run is started by a PY_JOB_RUN job on the python thread (py_host.c), which returns at
 * once, so the job queue keeps moving while the run runs:
 *
 * - in-process: the script runs on a Python thread of its own (runpy semantics, a fresh
 *   __main__ namespace); what it writes to sys.stdout/sys.stderr and its end are posted,
 *   from that thread, to a mutex-protected queue that a uv_async_t drains on the loop
 *   thread into the message callback;
 * - isolated: the job hands the request to a child the python thread forked from the
 *   interpreter (PyOS_BeforeFork/AfterFork), before the request when one was ready
 *   (py_prefork.c), else now; the child runs the script with its fd 1 and 2 on pipes and
 *   never returns into the daemon; the job's output is {"pid", "stdout_fd", "stderr_fd"}
 *   and the loop thread hands those to run_channel_watch_child, which streams the pipes,
 *   reaps the child through a pidfd and enforces the wall timeout with SIGKILL;
 * - sandboxed (input "sandbox": the settings cmd_runs.c adds): isolated, and the child
 *   applies sandbox.c's layers (sandbox_unshare, sandbox_filter, sandbox_restrict,
 *   sandbox_limit_processes) before the script, from a plan built on the python thread; a
 *   failing layer ends it with status 125 and a line on stderr. Its process group is
 *   killed with it (when it exits, times out or is killed).
 *
 * Messages (json, stolen by the callback): {"stream": "stdout"|"stderr", "data": str} while
 * the run writes, then exactly one {"end": true, "result": {"exit_code", "timed_out",
 * "signal", "isolated", "duration_ms" (wall), "cpu_ms", "max_rss_kb" (getrusage: the run
 * thread's CPU and the daemon's peak in-process, wait4's for a child)}}.
 *
 * One channel per process (like the interpreter). The channel is loop-thread code
 * (run_channel.c, which never calls into Python); the python side of runs is py_run.c.
 * No PyObject crosses this header.
 */

/* Called on the loop thread for each message of run_id; msg is owned by the callee. */
typedef void (*run_channel_message_cb)(uint64_t run_id, json_t *msg, void *data);

/* Opens the channel on loop. Returns 0, or -EBUSY (already open) with err filled. */
int run_channel_open(uv_loop_t *loop, run_channel_message_cb cb, void *data, char *err,
                        size_t errlen);

/* Posts msg (stolen) for run_id, from any thread (a run's thread: py_run.c). Dropped when
 * the channel is closed. */
void run_channel_post(uint64_t run_id, json_t *msg);

/* Closes the channel: isolated children still running are killed (SIGKILL) and reaped,
 * messages posted later are dropped, and the libuv handles are closed (their memory goes
 * in the close callbacks). Loop thread only; NULL-safe and idempotent. */
void run_channel_close(void);

/* Takes over an isolated child started by a PY_JOB_RUN job: reads out_fd and err_fd (both
 * owned from here on, closed by the channel) as the run's stdout and stderr, and
 * globals_fd (-1 when the run has no "get"; owned too) as the JSON of its run --get values,
 * at most 16 MiB, whose "globals", "missing" and "omitted" join the end's result; reaps pid
 * and, when timeout_ms > 0, kills it with SIGKILL that long after this call (timed_out:
 * true). The end message follows the child's exit and the end of every pipe. Returns 0, or
 * a negative errno with err filled (the child is then killed and the fds closed). */
int run_channel_watch_child(uint64_t run_id, int pid, int out_fd, int err_fd, int globals_fd,
                            unsigned timeout_ms, char *err, size_t errlen);

/* Kills the isolated child of run_id (SIGKILL), e.g. when its client disconnected.
 * Returns 0, or -ESRCH when run_id has no child being watched. Loop thread only. */
int run_channel_kill_child(uint64_t run_id);

#endif
