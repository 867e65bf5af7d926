/* pyhotctl: repl, a console into the daemon's interpreter (libedit, dlopen'ed). */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dlfcn.h>
#include <jansson.h>

#include "pyhotctl.h"

static char *history_path(void) {
    const char *home = getenv("HOME");
    char *path;

    if (home == NULL || home[0] == '\0')
        return NULL;
    path = malloc(strlen(home) + sizeof("/.pyhot_history"));
    if (path != NULL)
        sprintf(path, "%s/.pyhot_history", home);
    return path;
}

/*
 * libedit, loaded by repl only (dlopen): linking it costs every pyhotctl invocation ~0.4 ms
 * of dynamic linking (measured with hyperfine), which `run` cannot afford
 * (docs/benchmarks.md). Without it, repl reads plain lines. A static pyhotctl (the default
 * build, PYHOTCTL_STATIC) loads libedit with a libc of its own: a line readline() returns
 * is libedit's libc's malloc, so it goes back through that libc's free (dlsym finds it
 * among libedit's dependencies).
 */
#ifndef PYHOT_LIBEDIT_SONAME

#define PYHOT_LIBEDIT_SONAME "libedit.so.2"
#endif

struct editline {
    char *(*readline)(const char *prompt);
    int (*add_history)(const char *line);
    int (*read_history)(const char *path);
    int (*write_history)(const char *path);
    void (*using_history)(void);
    void (*free)(void *ptr);       /* for readline()'s lines */
};

static bool editline_load(struct editline *el) {
    void *h = dlopen(PYHOT_LIBEDIT_SONAME, RTLD_NOW | RTLD_LOCAL);

    if (h == NULL)
        return false;
    *(void **)&el->readline = dlsym(h, "readline");
    *(void **)&el->add_history = dlsym(h, "add_history");
    *(void **)&el->read_history = dlsym(h, "read_history");
    *(void **)&el->write_history = dlsym(h, "write_history");
    *(void **)&el->using_history = dlsym(h, "using_history");
#ifdef PYHOTCTL_STATIC
    *(void **)&el->free = dlsym(h, "free");
#else
    /* The global scope's free, the one libedit's malloc calls pair with (a sanitizer's
     * interposed allocator, where there is one; dlsym on h would find libc's). */
    el->free = free;
#endif
    return el->readline != NULL && el->add_history != NULL && el->read_history != NULL &&
           el->write_history != NULL && el->using_history != NULL && el->free != NULL;
}

/* A line without its newline, or NULL at end of input: libedit's, or a plain read when
 * libedit is missing; always a copy from our own malloc (see struct editline). */
static char *repl_read(const struct editline *el, const char *prompt) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    if (el != NULL) {
        char *edited = el->readline(prompt);
        if (edited == NULL)
            return NULL;
        line = strdup(edited);
        el->free(edited);
        return line;
    }
    fputs(prompt, stdout);
    fflush(stdout);
    n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = '\0';
    return line;
}

/* Id of the interrupt request the repl sends on Ctrl-C; its response is not waited for. */
#define INTERRUPT_ID 2

/*
 * Waits for the response to the repl input just sent. Ctrl-C meanwhile asks pyhotd to
 * interrupt the statement (the interrupt command): it gets KeyboardInterrupt where it
 * runs, as in python3, and the response then carries its traceback.
 */
static int repl_wait(struct ctl *ctl, const sigset_t *sigint, json_t **resp) {
    int r;

    ctl->stop_signals = sigint;
    for (;;) {
        r = ctl_wait_response(ctl, resp, NULL);
        if (r != WAIT_INTERRUPTED)
            break;
        got_stop_signal = 0;
        r = ctl_send_id(ctl, INTERRUPT_ID, "interrupt", NULL);
        if (r != EXIT_OK)
            break;
    }
    ctl->stop_signals = NULL;
    return r;
}

int cmd_repl(struct ctl *ctl, int argc, char **argv) {
    struct editline editline_api, *el = editline_load(&editline_api) ? &editline_api : NULL;
    char *source = NULL, *hist = history_path();
    size_t source_len = 0;
    struct sigaction sa = { .sa_handler = on_stop_signal };
    sigset_t sigint;
    int r;

    (void)argc;
    (void)argv;
    /* Ctrl-C only sets a flag: while a statement runs it interrupts the statement, at the
     * prompt it drops the line being typed; it never ends the console (Ctrl-D does). */
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    if (ctl_connect(ctl) < 0) {
        free(hist);
        return EXIT_USAGE;
    }
    if (el == NULL) {
        free(hist);
        hist = NULL;
    } else {
        el->using_history();
        if (hist != NULL)
            el->read_history(hist);
    }
    if (isatty(STDIN_FILENO))
        printf("pyhotd's interpreter; Ctrl-C interrupts a statement, Ctrl-D leaves.\n");
    for (;;) {
        char *line = repl_read(el, source == NULL ? ">>> " : "... ");
        json_t *args, *resp, *result;
        char *grown;
        size_t n;

        if (got_stop_signal) {
            /* Ctrl-C at the prompt: python3 says KeyboardInterrupt and prompts afresh. */
            got_stop_signal = 0;
            clearerr(stdin);
            free(line);
            fputs("\nKeyboardInterrupt\n", stdout);
            free(source);
            source = NULL;
            source_len = 0;
            continue;
        }
        if (line == NULL) {
            fputc('\n', stdout);
            r = EXIT_OK;
            break;
        }
        if (line[0] != '\0' && el != NULL)
            el->add_history(line);
        n = strlen(line);
        grown = realloc(source, source_len + n + 2);
        if (grown == NULL) {
            free(line);
            fail("out of memory");
            r = EXIT_USAGE;
            break;
        }
        source = grown;
        if (source_len > 0)
            source[source_len++] = '\n';
        memcpy(source + source_len, line, n + 1);
        source_len += n;
        free(line);

        args = json_pack("{s:s%}", "source", source, source_len);
        if (args == NULL) {
            fail("the input is not valid UTF-8");
            free(source);
            source = NULL;
            source_len = 0;
            continue;
        }
        r = ctl_send(ctl, "repl", args);
        json_decref(args);
        if (r != EXIT_OK)
            break;
        r = repl_wait(ctl, &sigint, &resp);
        if (r != EXIT_OK)
            break;
        if (!json_is_true(json_object_get(resp, "ok"))) {
            report_error(resp);
        } else {
            result = json_object_get(resp, "result");
            if (json_is_true(json_object_get(result, "incomplete"))) {
                json_decref(resp);
                continue;
            }
            put_exact(stdout, json_object_get(result, "stdout"));
            fflush(stdout);
            put_exact(stderr, json_object_get(result, "stderr"));
            fflush(stderr);
        }
        json_decref(resp);
        free(source);
        source = NULL;
        source_len = 0;
    }
    if (hist != NULL) {
        el->write_history(hist);
        free(hist);
    }
    free(source);
    return r;
}
