# bash completion for callsctl                              -*- shell-script -*-
# Generated from the callsctl CLI by `make docs` (tools/gen_completions.py).
# Do not edit: change the CLI and run `make docs`. Install: see README, Shell completion.

# Does option $2 of command path $1 take a value (so the next word is not a command)?
_callsctl_takes_value() {
    case "$1" in
        "callsctl serve") case "$2" in --config|--bind|--data-dir|--log-level|--log-format|--udp-port|--ice-host-override|--udp-buffer-size|--media-threads|--media-late-drop-ms|--tcp-port|--ice-tcp|--ice-host-port-override|--stun-server|--ice-servers|--turn-static-auth-secret|--turn-credentials-expiration-minutes|--max-call-participants|--default-call|--session-timeout|--api-port|--tls-cert|--tls-key|--public-url|--admin-key-file|--metrics-port|--metrics-bind|--metrics-auth|--cluster|--cluster-policy|--node-id|--node-url|--drain-timeout) return 0 ;; esac ;;
        "callsctl token") case "$2" in --call|-c|--user|-u|--ttl|--data-dir|--config|--url) return 0 ;; esac ;;
        "callsctl tune") case "$2" in --data-dir|--server) return 0 ;; esac ;;
        "callsctl worker") case "$2" in --queue|-q|--data-dir|--max-jobs) return 0 ;; esac ;;
        "callsctl top") case "$2" in --host|--server|--admin-key|--admin-key-file|--data-dir|--ca-cert|--client-config|--refresh) return 0 ;; esac ;;
        "callsctl loadtest") case "$2" in --host|--calls|--users-per-call|--unmuted|--duration|--join-duration|--data-dir|--secret-file|--token-secret|--call-prefix|--processes|--srtp-profile) return 0 ;; esac ;;
        "callsctl check udp") case "$2" in --host|-H|--port|-p|--message|-m|--count|-c|--timeout|-t) return 0 ;; esac ;;
        "callsctl check tcp") case "$2" in --host|-H|--port|-p|--message|-m|--count|-c|--timeout|-t) return 0 ;; esac ;;
        "callsctl check listen") case "$2" in --port|-p|--bind|-b|--count|-c|--duration|-d) return 0 ;; esac ;;
        "callsctl check capture") case "$2" in --port|-p|--iface|-i|--duration|-d|--count|-c|--write|-w|--host) return 0 ;; esac ;;
        "callsctl check config") case "$2" in --config|-f) return 0 ;; esac ;;
        "callsctl check stun") case "$2" in --server|-s|--timeout|-t) return 0 ;; esac ;;
        "callsctl check rtc") case "$2" in --host|-H|--udp-port|--tcp-port|--api-port|--api-url|--timeout|-t) return 0 ;; esac ;;
        "callsctl check rtcd") case "$2" in --url|--timeout|-t) return 0 ;; esac ;;
        "callsctl check webrtc") case "$2" in --host|-H|--api-port|--api-url|--token|--data-dir|--mattermost|--channel|--config|--timeout|-t) return 0 ;; esac ;;
        "callsctl check all") case "$2" in --host|-H|--udp-port|--tcp-port|--api-port|--api-url|--stun-server|--timeout|-t|--token|--rtcd-url|--mattermost|--channel|--mattermost-config|--data-dir) return 0 ;; esac ;;
        "callsctl check turn") case "$2" in --server|-s|--secret|--user|-u|--password|-p|--realm|--peer-ip|--timeout|-t) return 0 ;; esac ;;
        "callsctl calls") case "$2" in --server|-s|--admin-key|--admin-key-file|--ca-cert|--client-config|--timeout) return 0 ;; esac ;;
        "callsctl calls end") case "$2" in --reason) return 0 ;; esac ;;
        "callsctl calls enable") case "$2" in --max-participants) return 0 ;; esac ;;
        "callsctl calls settings") case "$2" in --max-participants) return 0 ;; esac ;;
        "callsctl calls history") case "$2" in --limit|-n|--call) return 0 ;; esac ;;
        "callsctl record") case "$2" in --server|-s|--admin-key|--admin-key-file|--ca-cert|--client-config|--timeout) return 0 ;; esac ;;
        "callsctl record start") case "$2" in --max-duration) return 0 ;; esac ;;
        "callsctl record stop") case "$2" in --wait-timeout) return 0 ;; esac ;;
        "callsctl record list") case "$2" in --call|--limit|-n) return 0 ;; esac ;;
        "callsctl record transcribe") case "$2" in --wait-timeout) return 0 ;; esac ;;
        "callsctl record transcript") case "$2" in --output|-o) return 0 ;; esac ;;
        "callsctl fleet list") case "$2" in --cluster|--config) return 0 ;; esac ;;
        "callsctl fleet drain") case "$2" in --cluster|--config|--timeout) return 0 ;; esac ;;
    esac
    return 1
}

_callsctl_files() {
    local IFS=$'\n'
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen -f -- "$cur"))
}

_callsctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev='' cmd=callsctl word i skip=0
    COMPREPLY=()
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD-1]}
    # bash splits --option=value at '=' (COMP_WORDBREAKS): look through it.
    if [[ $cur == '=' ]]; then
        cur=''
    elif [[ $prev == '=' ]] && ((COMP_CWORD > 1)); then
        prev=${COMP_WORDS[COMP_CWORD-2]}
    fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if ((skip > 0)); then skip=$((skip - 1)); continue; fi
        case $word in
            -*)
                if _callsctl_takes_value "$cmd" "$word"; then
                    skip=1
                    [[ ${COMP_WORDS[i+1]} == '=' ]] && skip=2
                fi
                continue ;;
        esac
        case "$cmd $word" in
            "callsctl serve"|"callsctl token"|"callsctl tune"|\
            "callsctl worker"|"callsctl top"|"callsctl loadtest"|\
            "callsctl check"|"callsctl check udp"|"callsctl check tcp"|\
            "callsctl check listen"|"callsctl check capture"|"callsctl check config"|\
            "callsctl check stun"|"callsctl check rtc"|"callsctl check rtcd"|\
            "callsctl check webrtc"|"callsctl check all"|"callsctl check turn"|\
            "callsctl calls"|"callsctl calls list"|"callsctl calls show"|\
            "callsctl calls mute"|"callsctl calls mute-others"|"callsctl calls stop-screen"|\
            "callsctl calls lower-hand"|"callsctl calls remove"|"callsctl calls end"|\
            "callsctl calls host"|"callsctl calls enable"|"callsctl calls disable"|\
            "callsctl calls settings"|"callsctl calls history"|"callsctl record"|\
            "callsctl record start"|"callsctl record stop"|"callsctl record list"|\
            "callsctl record get"|"callsctl record rm"|"callsctl record transcribe"|\
            "callsctl record transcript"|"callsctl record captions"|"callsctl fleet"|\
            "callsctl fleet list"|"callsctl fleet drain")
                cmd="$cmd $word" ;;
        esac
    done

    case "$cmd" in
        "callsctl")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--version -V --install-completion --show-completion --help -h" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "serve token tune worker top loadtest check calls record fleet" -- "$cur"))
            fi ;;
        "callsctl serve")
            case $prev in
                --config) _callsctl_files; return ;;
                --bind) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
                --log-level) return ;;  # free-form value
                --log-format) return ;;  # free-form value
                --udp-port) return ;;  # free-form value
                --ice-host-override) return ;;  # free-form value
                --udp-buffer-size) return ;;  # free-form value
                --media-threads) return ;;  # free-form value
                --media-late-drop-ms) return ;;  # free-form value
                --tcp-port) return ;;  # free-form value
                --ice-tcp) return ;;  # free-form value
                --ice-host-port-override) return ;;  # free-form value
                --stun-server) return ;;  # free-form value
                --ice-servers) return ;;  # free-form value
                --turn-static-auth-secret) return ;;  # free-form value
                --turn-credentials-expiration-minutes) return ;;  # free-form value
                --max-call-participants) return ;;  # free-form value
                --default-call) return ;;  # free-form value
                --session-timeout) return ;;  # free-form value
                --api-port) return ;;  # free-form value
                --tls-cert) return ;;  # free-form value
                --tls-key) return ;;  # free-form value
                --public-url) return ;;  # free-form value
                --admin-key-file) return ;;  # free-form value
                --metrics-port) return ;;  # free-form value
                --metrics-bind) return ;;  # free-form value
                --metrics-auth) return ;;  # free-form value
                --cluster) return ;;  # free-form value
                --cluster-policy) return ;;  # free-form value
                --node-id) return ;;  # free-form value
                --node-url) return ;;  # free-form value
                --drain-timeout) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--config --bind --data-dir --log-level --log-format --udp-port --ice-host-override --udp-buffer-size --media-threads --media-late-drop-ms --tcp-port --ice-tcp --ice-host-port-override --stun-server --ice-servers --turn-static-auth-secret --turn-credentials-expiration-minutes --enable-ipv6 --preload-media --max-call-participants --default-call --session-timeout --default-enabled --no-default-enabled --api-port --tls-cert --tls-key --tls-self-signed --public-url --admin-key-file --metrics-port --metrics-bind --metrics-auth --cluster --cluster-policy --node-id --node-url --drain-timeout --print-config --help -h" -- "$cur"))
            fi ;;
        "callsctl token")
            case $prev in
                --call|-c) return ;;  # free-form value
                --user|-u) return ;;  # free-form value
                --ttl) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
                --config) _callsctl_files; return ;;
                --url) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--call -c --user -u --ttl --data-dir --config --url --json --help -h" -- "$cur"))
            fi ;;
        "callsctl tune")
            case $prev in
                --data-dir) return ;;  # free-form value
                --server) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--apply --persist --revert --dry-run --yes -y --json --data-dir --server --help -h" -- "$cur"))
            fi ;;
        "callsctl worker")
            case $prev in
                --queue|-q) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
                --max-jobs) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--queue -q --data-dir --max-jobs --help -h" -- "$cur"))
            fi ;;
        "callsctl top")
            case $prev in
                --host|--server) return ;;  # free-form value
                --admin-key) return ;;  # free-form value
                --admin-key-file) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
                --ca-cert) return ;;  # free-form value
                --client-config) return ;;  # free-form value
                --refresh) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host --server --admin-key --admin-key-file --data-dir --ca-cert --insecure -k --client-config --refresh --read-only --once --json --help -h" -- "$cur"))
            fi ;;
        "callsctl loadtest")
            case $prev in
                --host) return ;;  # free-form value
                --calls) return ;;  # free-form value
                --users-per-call) return ;;  # free-form value
                --unmuted) return ;;  # free-form value
                --duration) return ;;  # free-form value
                --join-duration) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
                --secret-file) _callsctl_files; return ;;
                --token-secret) return ;;  # free-form value
                --call-prefix) return ;;  # free-form value
                --processes) return ;;  # free-form value
                --srtp-profile) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host --calls --users-per-call --unmuted --screen-sharing --video --duration --join-duration --data-dir --secret-file --token-secret --call-prefix --allow-remote --insecure --processes --data-channel --no-data-channel --srtp-profile --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--help -h" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "udp tcp listen capture config stun rtc rtcd webrtc all turn" -- "$cur"))
            fi ;;
        "callsctl check udp")
            case $prev in
                --host|-H) return ;;  # free-form value
                --port|-p) return ;;  # free-form value
                --message|-m) return ;;  # free-form value
                --count|-c) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host -H --port -p --message -m --count -c --timeout -t --stun --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check tcp")
            case $prev in
                --host|-H) return ;;  # free-form value
                --port|-p) return ;;  # free-form value
                --message|-m) return ;;  # free-form value
                --count|-c) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host -H --port -p --message -m --count -c --timeout -t --stun --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check listen")
            case $prev in
                --port|-p) return ;;  # free-form value
                --bind|-b) return ;;  # free-form value
                --count|-c) return ;;  # free-form value
                --duration|-d) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--udp -u --tcp --port -p --bind -b --echo -e --count -c --duration -d --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check capture")
            case $prev in
                --port|-p) return ;;  # free-form value
                --iface|-i) return ;;  # free-form value
                --duration|-d) return ;;  # free-form value
                --count|-c) return ;;  # free-form value
                --write|-w) _callsctl_files; return ;;
                --host) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--port -p --iface -i --duration -d --count -c --write -w --host --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check config")
            case $prev in
                --config|-f) _callsctl_files; return ;;
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--config -f --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check stun")
            case $prev in
                --server|-s) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--server -s --timeout -t --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check rtc")
            case $prev in
                --host|-H) return ;;  # free-form value
                --udp-port) return ;;  # free-form value
                --tcp-port) return ;;  # free-form value
                --api-port) return ;;  # free-form value
                --api-url) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host -H --udp-port --tcp-port --api-port --api-url --timeout -t --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check rtcd")
            case $prev in
                --url) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--url --timeout -t --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check webrtc")
            case $prev in
                --host|-H) return ;;  # free-form value
                --api-port) return ;;  # free-form value
                --api-url) return ;;  # free-form value
                --token) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
                --mattermost) return ;;  # free-form value
                --channel) return ;;  # free-form value
                --config) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host -H --api-port --api-url --token --data-dir --mattermost --channel --config --force-turn --force-tcp --timeout -t --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check all")
            case $prev in
                --host|-H) return ;;  # free-form value
                --udp-port) return ;;  # free-form value
                --tcp-port) return ;;  # free-form value
                --api-port) return ;;  # free-form value
                --api-url) return ;;  # free-form value
                --stun-server) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
                --token) return ;;  # free-form value
                --rtcd-url) return ;;  # free-form value
                --mattermost) return ;;  # free-form value
                --channel) return ;;  # free-form value
                --mattermost-config) return ;;  # free-form value
                --data-dir) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--host -H --udp-port --tcp-port --api-port --api-url --stun-server --with-stun --timeout -t --token --rtcd-url --mattermost --channel --mattermost-config --data-dir --json --help -h" -- "$cur"))
            fi ;;
        "callsctl check turn")
            case $prev in
                --server|-s) return ;;  # free-form value
                --secret) return ;;  # free-form value
                --user|-u) return ;;  # free-form value
                --password|-p) return ;;  # free-form value
                --realm) return ;;  # free-form value
                --peer-ip) return ;;  # free-form value
                --timeout|-t) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--server -s --secret --user -u --password -p --realm --peer-ip --timeout -t --json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls")
            case $prev in
                --server|-s) return ;;  # free-form value
                --admin-key) return ;;  # free-form value
                --admin-key-file) return ;;  # free-form value
                --ca-cert) return ;;  # free-form value
                --client-config) return ;;  # free-form value
                --timeout) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--server -s --admin-key --admin-key-file --ca-cert --insecure -k --client-config --timeout --help -h" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "list show mute mute-others stop-screen lower-hand remove end host enable disable settings history" -- "$cur"))
            fi ;;
        "callsctl calls list")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls show")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls mute")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls mute-others")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls stop-screen")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls lower-hand")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls remove")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls end")
            case $prev in
                --reason) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--reason --json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls host")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls enable")
            case $prev in
                --max-participants) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--max-participants --json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls disable")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls settings")
            case $prev in
                --max-participants) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--max-participants --reset --json --help -h" -- "$cur"))
            fi ;;
        "callsctl calls history")
            case $prev in
                --limit|-n) return ;;  # free-form value
                --call) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--limit -n --call --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record")
            case $prev in
                --server|-s) return ;;  # free-form value
                --admin-key) return ;;  # free-form value
                --admin-key-file) return ;;  # free-form value
                --ca-cert) return ;;  # free-form value
                --client-config) return ;;  # free-form value
                --timeout) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--server -s --admin-key --admin-key-file --ca-cert --insecure -k --client-config --timeout --help -h" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "start stop list get rm transcribe transcript captions" -- "$cur"))
            fi ;;
        "callsctl record start")
            case $prev in
                --max-duration) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--max-duration --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record stop")
            case $prev in
                --wait-timeout) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--wait --no-wait --wait-timeout --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record list")
            case $prev in
                --call) return ;;  # free-form value
                --limit|-n) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--call --limit -n --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record get")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--logs --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record rm")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            fi ;;
        "callsctl record transcribe")
            case $prev in
                --wait-timeout) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--wait --no-wait --wait-timeout --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record transcript")
            case $prev in
                --output|-o) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--vtt --output -o --json --help -h" -- "$cur"))
            fi ;;
        "callsctl record captions")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--stop --json --help -h" -- "$cur"))
            fi ;;
        "callsctl fleet")
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--help -h" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "list drain" -- "$cur"))
            fi ;;
        "callsctl fleet list")
            case $prev in
                --cluster) return ;;  # free-form value
                --config) _callsctl_files; return ;;
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--cluster --config --json --help -h" -- "$cur"))
            fi ;;
        "callsctl fleet drain")
            case $prev in
                --cluster) return ;;  # free-form value
                --config) _callsctl_files; return ;;
                --timeout) return ;;  # free-form value
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--cluster --config --wait --timeout --json --help -h" -- "$cur"))
            fi ;;
    esac
}

complete -F _callsctl callsctl
