# bash completion for pyhotctl, the client of pyhotd's control socket.
# Installed as share/bash-completion/completions/pyhotctl; or: source completion/pyhotctl.bash
#
# Commands, options and event types come from this file; module names (reload, modules,
# tail -m) are asked of the running daemon (`pyhotctl modules`, one second at most), on the
# socket given on the command line if any.

_pyhotctl_commands="hello ping status stats metrics plugins modules reload watch unwatch pause resume tail history exec run repl stop help"
_pyhotctl_events="reload batch plugin run started stopping watch_error import_error startup_error"

# Module names loaded in the daemon whose socket is $1 (may be empty).
_pyhotctl_modules()
{
    local socket=$1
    pyhotctl ${socket:+--socket "$socket"} --timeout 1 modules 2>/dev/null |
        awk 'NR > 1 { print $1 }'
}

_pyhotctl()
{
    local cur=${COMP_WORDS[COMP_CWORD]}
    local prev=${COMP_WORDS[COMP_CWORD-1]}
    local i cmd= socket=

    # The command word and a --socket given so far.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -s|--socket) socket=${COMP_WORDS[i+1]}; ((i++)) ;;
            --socket=*) socket=${COMP_WORDS[i]#--socket=} ;;
            -t|--timeout|-n|--lines|-e|--event|-m|--module|--get|--set|--memory|--cpu|--cwd) ((i++)) ;;
            -*) ;;
            *) [[ -z $cmd ]] && cmd=${COMP_WORDS[i]} ;;
        esac
    done

    case $prev in
        -s|--socket)
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
        -t|--timeout|-n|--lines|--get|--set|--memory|--cpu)
            COMPREPLY=()
            return ;;
        --cwd)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -d -- "$cur"))
            return ;;
        -e|--event)
            COMPREPLY=($(compgen -W "$_pyhotctl_events" -- "$cur"))
            return ;;
        -m|--module)
            COMPREPLY=($(compgen -W "$(_pyhotctl_modules "$socket")" -- "$cur"))
            return ;;
    esac

    local global="--socket --json --timeout --help --version"
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$global" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$_pyhotctl_commands" -- "$cur"))
        fi
        return
    fi

    if [[ $cur == -* ]]; then
        case $cmd in
            tail) COMPREPLY=($(compgen -W "$global --lines --event --module" -- "$cur")) ;;
            history) COMPREPLY=($(compgen -W "$global --lines --event --module" -- "$cur")) ;;
            run) COMPREPLY=($(compgen -W "$global --isolate --sandbox --set --get --memory --cpu --pids --cwd -m"\
                                         -- "$cur")) ;;
            *) COMPREPLY=($(compgen -W "$global" -- "$cur")) ;;
        esac
        return
    fi

    case $cmd in
        help)
            COMPREPLY=($(compgen -W "$_pyhotctl_commands" -- "$cur")) ;;
        watch|unwatch)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -d -- "$cur")) ;;
        reload)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -W "$(_pyhotctl_modules "$socket")" -- "$cur")
                       $(compgen -f -X '!*.py' -- "$cur") $(compgen -d -- "$cur")) ;;
        modules)
            COMPREPLY=($(compgen -W "$(_pyhotctl_modules "$socket")" -- "$cur")) ;;
        run)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur")) ;;
        *)
            COMPREPLY=() ;;
    esac
}

complete -F _pyhotctl pyhotctl
