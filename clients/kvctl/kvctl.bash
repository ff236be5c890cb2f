# kvctl.bash -- bash completion for kvctl, prefixd's operator tool.
#
# Install: source it from ~/.bashrc, or copy it to
# /usr/share/bash-completion/completions/kvctl (cmake --install does).
#
# Completes the commands, each command's flags and the global ones, the values of --tier and
# --sort, file names after --file and --chat, tenant subcommands, help topics, and prefix ids
# after show, pin, unpin and evict (asked of the daemon with `kvctl ls --json`, using the
# --addr and --key already typed on the line). Kept in step with kvctl's --help texts; the test
# in tests/daemon/test_kvctl.py checks that every command and flag listed here exists.

_kvctl() {
    local cur prev
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    local commands="status stats health ls show evict pin unpin warm lookup gen tenant help"
    local global="--addr --key --json --yes --no-color --timeout --tls --tls-ca --tls-client-cert
        --tls-client-key --help"

    # the command, the tenant subcommand, and the connection options typed so far
    local i word cmd="" sub=""
    local -a conn=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
            --addr | --address | -a | --key | -k | --tls-ca | --tls-client-cert | --tls-client-key)
                conn+=("$word" "${COMP_WORDS[i + 1]}")
                ((i++))
                continue
                ;;
            --tls)
                conn+=("$word")
                continue
                ;;
            --timeout | --tenant | -t | --tier | --sort | -s | --limit | -l | --ttl | --pin-ttl | \
                --text | --file | -f | --chat | --namespace | --max-tokens | -n | --temperature | \
                --seed | --count | --max-device-blocks | --max-host-blocks | --max-disk-blocks | \
                --max-concurrent | --max-context | --tokens-per-minute | --requests-per-minute)
                ((i++))
                continue
                ;;
            -*) continue ;;
        esac
        if [[ -z $cmd ]]; then
            cmd=$word
        elif [[ ($cmd == tenant || $cmd == tenants) && -z $sub ]]; then
            sub=$word
        fi
    done

    # the value of an option
    case $prev in
        --tier)
            mapfile -t COMPREPLY < <(compgen -W "gpu device host disk" -- "$cur")
            return
            ;;
        --sort | -s)
            mapfile -t COMPREPLY < <(compgen -W "hits age size" -- "$cur")
            return
            ;;
        --file | -f | --chat | --schema | --tls-ca | --tls-client-cert | --tls-client-key)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return
            ;;
        --addr | --address | -a)
            mapfile -t COMPREPLY < <(compgen -W "unix: 127.0.0.1:7878" -- "$cur")
            compopt -o nospace 2>/dev/null
            return
            ;;
        --key | -k | --timeout | --tenant | -t | --limit | -l | --ttl | --pin-ttl | --text | \
            --namespace | --max-tokens | -n | --temperature | --seed | --count | --watch | -w | \
            --max-device-blocks | --max-host-blocks | --max-disk-blocks | --max-concurrent | \
            --max-context | --tokens-per-minute | --requests-per-minute)
            return
            ;;
    esac

    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$global --version" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
        fi
        return
    fi

    local flags="" limits="--max-device-blocks --max-host-blocks --max-disk-blocks --max-concurrent --max-context --tokens-per-minute --requests-per-minute"
    case $cmd in
        stats) flags="--watch --count" ;;
        ls | list) flags="--tenant --tree --sort --limit" ;;
        evict) flags="--tenant --all --tier" ;;
        pin) flags="--ttl" ;;
        warm) flags="--text --file --chat --pin-ttl --namespace" ;;
        lookup) flags="--text --file --chat --namespace" ;;
        gen | generate) flags="--text --file --chat --max-tokens --temperature --seed --json-object --schema --namespace --no-cache" ;;
        help)
            mapfile -t COMPREPLY < <(compgen -W "$commands tiers tenants keys exit-codes json" -- "$cur")
            return
            ;;
        tenant | tenants)
            if [[ -z $sub ]]; then
                mapfile -t COMPREPLY < <(compgen -W "add ls rm limits rotate-key grant revoke" -- "$cur")
                return
            fi
            case $sub in
                add | create | limits) flags=$limits ;;
            esac
            ;;
    esac
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$flags $global" -- "$cur")
        return
    fi
    case $cmd in
        show | pin | unpin | evict)
            local ids
            ids=$("${COMP_WORDS[0]}" "${conn[@]}" --timeout 5s ls --json 2>/dev/null |
                sed -n 's/^ *"id": "\([0-9a-f]*\)",$/\1/p')
            mapfile -t COMPREPLY < <(compgen -W "$ids" -- "$cur")
            ;;
    esac
}

complete -F _kvctl kvctl
