# fish completion for callsctl
# Generated from the callsctl CLI by `make docs` (tools/gen_completions.py).
# Do not edit: change the CLI and run `make docs`. Install: see README, Shell completion.

function __callsctl_path --description 'The callsctl command being completed'
    set -l path callsctl
    set -l skip 0
    for tok in (commandline -opc)[2..-1]
        if test $skip -eq 1
            set skip 0
            continue
        end
        switch "$path $tok"
            case 'callsctl serve' 'callsctl token' 'callsctl tune' 'callsctl worker' 'callsctl top' 'callsctl loadtest' 'callsctl check' 'callsctl check udp' 'callsctl check tcp' 'callsctl check listen' 'callsctl check capture' 'callsctl check config' 'callsctl check stun' 'callsctl check rtc' 'callsctl check rtcd' 'callsctl check webrtc' 'callsctl check all' 'callsctl check turn' 'callsctl calls' 'callsctl calls list' 'callsctl calls show' 'callsctl calls mute' 'callsctl calls mute-others' 'callsctl calls stop-screen' 'callsctl calls lower-hand' 'callsctl calls remove' 'callsctl calls end' 'callsctl calls host' 'callsctl calls enable' 'callsctl calls disable' 'callsctl calls settings' 'callsctl calls history' 'callsctl record' 'callsctl record start' 'callsctl record stop' 'callsctl record list' 'callsctl record get' 'callsctl record rm' 'callsctl record transcribe' 'callsctl record transcript' 'callsctl record captions' 'callsctl fleet' 'callsctl fleet list' 'callsctl fleet drain'
                set path "$path $tok"
                continue
        end
        switch "$path/$tok"
            case 'callsctl serve/--config' 'callsctl serve/--bind' 'callsctl serve/--data-dir' 'callsctl serve/--log-level' 'callsctl serve/--log-format' 'callsctl serve/--udp-port' 'callsctl serve/--ice-host-override' 'callsctl serve/--udp-buffer-size' 'callsctl serve/--media-threads' 'callsctl serve/--media-late-drop-ms' 'callsctl serve/--tcp-port' 'callsctl serve/--ice-tcp' 'callsctl serve/--ice-host-port-override' 'callsctl serve/--stun-server' 'callsctl serve/--ice-servers' 'callsctl serve/--turn-static-auth-secret' 'callsctl serve/--turn-credentials-expiration-minutes' 'callsctl serve/--max-call-participants' 'callsctl serve/--default-call' 'callsctl serve/--session-timeout' 'callsctl serve/--api-port' 'callsctl serve/--tls-cert' 'callsctl serve/--tls-key' 'callsctl serve/--public-url' 'callsctl serve/--admin-key-file' 'callsctl serve/--metrics-port' 'callsctl serve/--metrics-bind' 'callsctl serve/--metrics-auth' 'callsctl serve/--cluster' 'callsctl serve/--cluster-policy' 'callsctl serve/--node-id' 'callsctl serve/--node-url' 'callsctl serve/--drain-timeout' 'callsctl token/--call' 'callsctl token/-c' 'callsctl token/--user' 'callsctl token/-u' 'callsctl token/--ttl' 'callsctl token/--data-dir' 'callsctl token/--config' 'callsctl token/--url' 'callsctl tune/--data-dir' 'callsctl tune/--server' 'callsctl worker/--queue' 'callsctl worker/-q' 'callsctl worker/--data-dir' 'callsctl worker/--max-jobs' 'callsctl top/--host' 'callsctl top/--server' 'callsctl top/--admin-key' 'callsctl top/--admin-key-file' 'callsctl top/--data-dir' 'callsctl top/--ca-cert' 'callsctl top/--client-config' 'callsctl top/--refresh' 'callsctl loadtest/--host' 'callsctl loadtest/--calls' 'callsctl loadtest/--users-per-call' 'callsctl loadtest/--unmuted' 'callsctl loadtest/--duration' 'callsctl loadtest/--join-duration' 'callsctl loadtest/--data-dir' 'callsctl loadtest/--secret-file' 'callsctl loadtest/--token-secret' 'callsctl loadtest/--call-prefix' 'callsctl loadtest/--processes' 'callsctl loadtest/--srtp-profile' 'callsctl check udp/--host' 'callsctl check udp/-H' 'callsctl check udp/--port' 'callsctl check udp/-p' 'callsctl check udp/--message' 'callsctl check udp/-m' 'callsctl check udp/--count' 'callsctl check udp/-c' 'callsctl check udp/--timeout' 'callsctl check udp/-t' 'callsctl check tcp/--host' 'callsctl check tcp/-H' 'callsctl check tcp/--port' 'callsctl check tcp/-p' 'callsctl check tcp/--message' 'callsctl check tcp/-m' 'callsctl check tcp/--count' 'callsctl check tcp/-c' 'callsctl check tcp/--timeout' 'callsctl check tcp/-t' 'callsctl check listen/--port' 'callsctl check listen/-p' 'callsctl check listen/--bind' 'callsctl check listen/-b' 'callsctl check listen/--count' 'callsctl check listen/-c' 'callsctl check listen/--duration' 'callsctl check listen/-d' 'callsctl check capture/--port' 'callsctl check capture/-p' 'callsctl check capture/--iface' 'callsctl check capture/-i' 'callsctl check capture/--duration' 'callsctl check capture/-d' 'callsctl check capture/--count' 'callsctl check capture/-c' 'callsctl check capture/--write' 'callsctl check capture/-w' 'callsctl check capture/--host' 'callsctl check config/--config' 'callsctl check config/-f' 'callsctl check stun/--server' 'callsctl check stun/-s' 'callsctl check stun/--timeout' 'callsctl check stun/-t' 'callsctl check rtc/--host' 'callsctl check rtc/-H' 'callsctl check rtc/--udp-port' 'callsctl check rtc/--tcp-port' 'callsctl check rtc/--api-port' 'callsctl check rtc/--api-url' 'callsctl check rtc/--timeout' 'callsctl check rtc/-t' 'callsctl check rtcd/--url' 'callsctl check rtcd/--timeout' 'callsctl check rtcd/-t' 'callsctl check webrtc/--host' 'callsctl check webrtc/-H' 'callsctl check webrtc/--api-port' 'callsctl check webrtc/--api-url' 'callsctl check webrtc/--token' 'callsctl check webrtc/--data-dir' 'callsctl check webrtc/--mattermost' 'callsctl check webrtc/--channel' 'callsctl check webrtc/--config' 'callsctl check webrtc/--timeout' 'callsctl check webrtc/-t' 'callsctl check all/--host' 'callsctl check all/-H' 'callsctl check all/--udp-port' 'callsctl check all/--tcp-port' 'callsctl check all/--api-port' 'callsctl check all/--api-url' 'callsctl check all/--stun-server' 'callsctl check all/--timeout' 'callsctl check all/-t' 'callsctl check all/--token' 'callsctl check all/--rtcd-url' 'callsctl check all/--mattermost' 'callsctl check all/--channel' 'callsctl check all/--mattermost-config' 'callsctl check all/--data-dir' 'callsctl check turn/--server' 'callsctl check turn/-s' 'callsctl check turn/--secret' 'callsctl check turn/--user' 'callsctl check turn/-u' 'callsctl check turn/--password' 'callsctl check turn/-p' 'callsctl check turn/--realm' 'callsctl check turn/--peer-ip' 'callsctl check turn/--timeout' 'callsctl check turn/-t' 'callsctl calls/--server' 'callsctl calls/-s' 'callsctl calls/--admin-key' 'callsctl calls/--admin-key-file' 'callsctl calls/--ca-cert' 'callsctl calls/--client-config' 'callsctl calls/--timeout' 'callsctl calls end/--reason' 'callsctl calls enable/--max-participants' 'callsctl calls settings/--max-participants' 'callsctl calls history/--limit' 'callsctl calls history/-n' 'callsctl calls history/--call' 'callsctl record/--server' 'callsctl record/-s' 'callsctl record/--admin-key' 'callsctl record/--admin-key-file' 'callsctl record/--ca-cert' 'callsctl record/--client-config' 'callsctl record/--timeout' 'callsctl record start/--max-duration' 'callsctl record stop/--wait-timeout' 'callsctl record list/--call' 'callsctl record list/--limit' 'callsctl record list/-n' 'callsctl record transcribe/--wait-timeout' 'callsctl record transcript/--output' 'callsctl record transcript/-o' 'callsctl fleet list/--cluster' 'callsctl fleet list/--config' 'callsctl fleet drain/--cluster' 'callsctl fleet drain/--config' 'callsctl fleet drain/--timeout'
                set skip 1
        end
    end
    echo $path
end

function __callsctl_at --description 'Is this callsctl command being completed?'
    test (__callsctl_path) = "$argv"
end

complete -c callsctl -f

# callsctl
complete -c callsctl -n '__callsctl_at callsctl' -a serve -d 'Run the SFU: all media on one UDP port, API/web client/signaling on --api-port.'
complete -c callsctl -n '__callsctl_at callsctl' -a token -d 'Print a join token for CALL and USER, signed with the server\'s secret.'
complete -c callsctl -n '__callsctl_at callsctl' -a tune -d 'Show and set the kernel UDP buffer limits a busy SFU needs.'
complete -c callsctl -n '__callsctl_at callsctl' -a worker -d 'Run recording jobs from a Redis job queue (a fleet\'s job worker).'
complete -c callsctl -n '__callsctl_at callsctl' -a top -d 'Live view of calls, sessions and server health, with host controls (a TUI).'
complete -c callsctl -n '__callsctl_at callsctl' -a loadtest -d 'Load-test a server: synthetic participants join, talk, and measure what comes back.'
complete -c callsctl -n '__callsctl_at callsctl' -a check -d 'Diagnose connectivity: netcat-style UDP/TCP probes and listeners, STUN/NAT discovery, TUR…'
complete -c callsctl -n '__callsctl_at callsctl' -a calls -d 'List, inspect and moderate live calls (the admin API of `callsctl serve`).'
complete -c callsctl -n '__callsctl_at callsctl' -a record -d 'Record calls: per-speaker and per-video files plus one MP4 (the server\'s job service).'
complete -c callsctl -n '__callsctl_at callsctl' -a fleet -d 'List and drain the nodes of a fleet (serve --cluster redis://…).'
complete -c callsctl -n '__callsctl_at callsctl' -l version -s V -d 'Print the version and exit.'
complete -c callsctl -n '__callsctl_at callsctl' -l install-completion -d 'Install completion for the current shell.'
complete -c callsctl -n '__callsctl_at callsctl' -l show-completion -d 'Show completion for the current shell, to copy it or customize the installation.'
complete -c callsctl -n '__callsctl_at callsctl' -l help -s h -d 'Show this message and exit.'

# callsctl serve
complete -c callsctl -n '__callsctl_at callsctl serve' -l config -r -F -d 'TOML file with settings (top level or a [serve] table).'
complete -c callsctl -n '__callsctl_at callsctl serve' -l bind -x -d 'Address the API and media sockets listen on. [default: 0.0.0.0]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l data-dir -x -d 'Directory for the database and generated secrets. [default: $XDG_DATA_HOME/callsctl]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l log-level -x -d 'Log verbosity. [default: info]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l log-format -x -d 'Log line format. [default: text]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l udp-port -x -d 'The one UDP port carrying every session\'s ICE, DTLS and SRTP. [default: 8443]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l ice-host-override -x -d 'Address advertised in ICE candidates (public IP of a NATed server); empty = the bind addr…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l udp-buffer-size -x -d 'SO_RCVBUF/SO_SNDBUF asked for on the media socket (see `callsctl tune`). [default: 167772…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l media-threads -x -d 'Threads one packet\'s fan-out to many receivers may use (fan-outs of 64 or more receivers…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l media-late-drop-ms -x -d 'An audio packet that waited longer than this in the media socket\'s receive queue (the ser…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l tcp-port -x -d 'TCP port for ICE-TCP (RFC 6544), the fallback of clients whose UDP is blocked; 0 = the sa…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l ice-tcp -x -d 'Listen for ICE-TCP and advertise TCP candidates. [default: true]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l ice-host-port-override -x -d 'Port advertised in ICE candidates instead of the real one (port forwarding, Docker, load…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l stun-server -x -d 'STUN server (host:port) asked once at startup for the public address when ice_host_overri…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l ice-servers -x -d 'STUN/TURN URIs handed to clients, comma-separated (stun:, turn:, turns:), or a JSON list…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l turn-static-auth-secret -x -d 'The static-auth-secret of coturn: clients get TURN REST credentials for the TURN URIs in…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l turn-credentials-expiration-minutes -x -d 'How long TURN credentials stay valid, in minutes (at most one week). [default: 1440]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l enable-ipv6 -d 'Also listen on IPv6 (same port numbers) and advertise IPv6 host candidates. [default: fal…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l preload-media -d 'Load the media stack (aiortc, PyAV, pyOpenSSL, pylibsrtp: about 33 MB) and check aiortc\'s…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l max-call-participants -x -d 'Most participants one call accepts; 0 = unlimited. [default: 0]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l default-call -x -d 'Call id used for the join link printed at startup. [default: default]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l session-timeout -x -d 'Seconds without any packet from a connected participant before it is removed. [default: 1…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l default-enabled -l no-default-enabled -d 'Whether calls may start in any call id; false = test mode: only call ids enabled through…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l api-port -x -d 'TCP port of the HTTP API, web client, /ws signaling and /metrics. [default: 8045]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l tls-cert -x -d 'PEM certificate (chain) for HTTPS/WSS on the API port; needs tls_key. [default: (empty)]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l tls-key -x -d 'PEM private key of tls_cert. [default: (empty)]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l tls-self-signed -d 'Serve HTTPS with a self-signed certificate generated (and reused) in the data dir. [defau…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l public-url -x -d 'Base URL participants open (e.g. https://calls.example.com behind a TLS proxy); join link…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l admin-key-file -x -d 'File holding the admin API key (sent as Authorization: Bearer); empty = generate one into…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l metrics-port -x -d 'TCP port of a separate listener that serves only /metrics (like Mattermost\'s metrics port…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l metrics-bind -x -d 'Address the metrics listener binds (e.g. 127.0.0.1 or a private address); empty = bind. […'
complete -c callsctl -n '__callsctl_at callsctl serve' -l metrics-auth -x -d 'Who may read /metrics: none = anyone (Prometheus without credentials); admin_key = only r…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l cluster -x -d 'Redis URL of the fleet (redis:// or rediss://, password in the URL); empty = a single nod…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l cluster-policy -x -d 'Where a new call goes: least-loaded = the active node with the lowest load; local = the n…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l node-id -x -d 'This node\'s name in the fleet; empty = <host name>-<api_port>. [default: (empty)]'
complete -c callsctl -n '__callsctl_at callsctl serve' -l node-url -x -d 'Base URL other nodes use to reach this node\'s API (relayed signaling, routed admin reques…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l drain-timeout -x -d 'Seconds a draining node (SIGTERM, `callsctl fleet drain`) waits for its calls to end befo…'
complete -c callsctl -n '__callsctl_at callsctl serve' -l print-config -d 'Print the merged configuration as TOML and exit.'
complete -c callsctl -n '__callsctl_at callsctl serve' -l help -s h -d 'Show this message and exit.'

# callsctl token
complete -c callsctl -n '__callsctl_at callsctl token' -l call -s c -x -d 'Call id the token admits to.'
complete -c callsctl -n '__callsctl_at callsctl token' -l user -s u -x -d 'User id (the JWT `sub`).'
complete -c callsctl -n '__callsctl_at callsctl token' -l ttl -x -d 'Lifetime: seconds or 30s/15m/24h/7d.'
complete -c callsctl -n '__callsctl_at callsctl token' -l data-dir -x -d 'Data dir of the server whose jwt_secret signs the token (read, never created). [default:…'
complete -c callsctl -n '__callsctl_at callsctl token' -l config -r -F -d 'Serve config file (TOML).'
complete -c callsctl -n '__callsctl_at callsctl token' -l url -x -d 'Base URL participants open, e.g. https://calls.example.com. [default: the server\'s public…'
complete -c callsctl -n '__callsctl_at callsctl token' -l json -d 'Print token, link and expiry as JSON.'
complete -c callsctl -n '__callsctl_at callsctl token' -l help -s h -d 'Show this message and exit.'

# callsctl tune
complete -c callsctl -n '__callsctl_at callsctl tune' -l apply -d 'Raise LOW settings to the recommendation now (needs root).'
complete -c callsctl -n '__callsctl_at callsctl tune' -l persist -d 'Write /etc/sysctl.d/99-callsctl.conf so the values survive reboot.'
complete -c callsctl -n '__callsctl_at callsctl tune' -l revert -d 'Restore the values saved by --apply and remove the --persist file.'
complete -c callsctl -n '__callsctl_at callsctl tune' -l dry-run -d 'Only print what would change (alone: what --apply would do).'
complete -c callsctl -n '__callsctl_at callsctl tune' -l yes -s y -d 'Do not ask for confirmation.'
complete -c callsctl -n '__callsctl_at callsctl tune' -l json -d 'Print the report or result as JSON.'
complete -c callsctl -n '__callsctl_at callsctl tune' -l data-dir -x -d 'Where --apply saves the previous values for --revert (default: $XDG_DATA_HOME/callsctl).'
complete -c callsctl -n '__callsctl_at callsctl tune' -l server -x -d 'URL of a running `callsctl serve`, asked which socket buffer it got.'
complete -c callsctl -n '__callsctl_at callsctl tune' -l help -s h -d 'Show this message and exit.'

# callsctl worker
complete -c callsctl -n '__callsctl_at callsctl worker' -l queue -s q -x -d 'redis://host:port/db of the job queue (the servers\' job_queue_url).'
complete -c callsctl -n '__callsctl_at callsctl worker' -l data-dir -x -d 'Where recordings are written (<data dir>/recordings). [default: $XDG_DATA_HOME/callsctl]'
complete -c callsctl -n '__callsctl_at callsctl worker' -l max-jobs -x -d 'Jobs this worker runs at once.'
complete -c callsctl -n '__callsctl_at callsctl worker' -l help -s h -d 'Show this message and exit.'

# callsctl top
complete -c callsctl -n '__callsctl_at callsctl top' -l host -l server -x -d 'Base URL of the server\'s API port. [default: http://127.0.0.1:8045]'
complete -c callsctl -n '__callsctl_at callsctl top' -l admin-key -x -d 'Admin API key (prefer the env var or a file: flags show in ps).'
complete -c callsctl -n '__callsctl_at callsctl top' -l admin-key-file -x -d 'File holding the admin API key (the server\'s <data dir>/admin_key).'
complete -c callsctl -n '__callsctl_at callsctl top' -l data-dir -x -d 'Data dir of a server on this host: its admin_key file is read. [default: $XDG_DATA_HOME/c…'
complete -c callsctl -n '__callsctl_at callsctl top' -l ca-cert -x -d 'PEM certificate to trust for https (e.g. the server\'s self-signed one).'
complete -c callsctl -n '__callsctl_at callsctl top' -l insecure -s k -d 'Do not verify the server\'s TLS certificate.'
complete -c callsctl -n '__callsctl_at callsctl top' -l client-config -x -d 'Client config TOML. [default: $XDG_CONFIG_HOME/callsctl/client.toml]'
complete -c callsctl -n '__callsctl_at callsctl top' -l refresh -x -d 'Seconds between updates (with --once: the interval rates are measured over).'
complete -c callsctl -n '__callsctl_at callsctl top' -l read-only -d 'Only watch: no mute, remove, end call or other control.'
complete -c callsctl -n '__callsctl_at callsctl top' -l once -d 'Print one snapshot (server, calls, sessions) and exit.'
complete -c callsctl -n '__callsctl_at callsctl top' -l json -d 'With --once: the snapshot as one JSON object (implies --once).'
complete -c callsctl -n '__callsctl_at callsctl top' -l help -s h -d 'Show this message and exit.'

# callsctl loadtest
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l host -x -d 'Server URL, e.g. http://127.0.0.1:8045.'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l calls -x -d 'Number of calls.'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l users-per-call -x -d 'Participants per call.'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l unmuted -x -d 'Participants per call who send audio (Opus, 50 pkt/s).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l screen-sharing -d 'The first participant of each call shares a screen (VP8, 1280x720, ~1.6 Mbit/s).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l video -d 'Unmuted participants also send camera video (VP8, 640x360).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l duration -x -d 'Whole run, joins included; it then stops by itself.'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l join-duration -x -d 'Joins are spread evenly over this time. [default: half of --duration, at most 30s]'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l data-dir -x -d 'The server\'s data dir: its jwt_secret (read, never created) signs the join tokens. [defau…'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l secret-file -r -F -d 'File holding the server\'s JWT secret (<data dir>/jwt_secret).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l token-secret -x -d 'The server\'s JWT secret itself (prefer the environment variable).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l call-prefix -x -d 'Call ids are PREFIX-1 .. PREFIX-N.'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l allow-remote -d 'Allow a target that is not loopback (a server you run).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l insecure -d 'Accept any TLS certificate (a self-signed one).'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l processes -x -d 'Load-generator processes sharing the participants (whole calls each, or one call\'s partic…'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l data-channel -l no-data-channel -d 'Each participant also opens the calls-dc data channel (SCTP over DTLS) like the web and M…'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l srtp-profile -x -d 'The one SRTP profile participants accept: SRTP_AES128_CM_SHA1_80 (what Chromium, and so M…'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l json -d 'Print the report as JSON.'
complete -c callsctl -n '__callsctl_at callsctl loadtest' -l help -s h -d 'Show this message and exit.'

# callsctl check
complete -c callsctl -n '__callsctl_at callsctl check' -a udp -d 'Probe a UDP port like `nc -v -u HOST 8443`: answered, refused or silent.'
complete -c callsctl -n '__callsctl_at callsctl check' -a tcp -d 'Probe a TCP port like `nc -v HOST 8443`: connected, refused or timed out (filtered).'
complete -c callsctl -n '__callsctl_at callsctl check' -a listen -d 'Listen like `nc -l -u -p 8443` and print what arrives, with its source.'
complete -c callsctl -n '__callsctl_at callsctl check' -a capture -d 'Capture packets on the media port and name each one: STUN, DTLS, SRTP, ICE-TCP.'
complete -c callsctl -n '__callsctl_at callsctl check' -a config -d 'Validate a `callsctl serve` config without starting; print the merged result.'
complete -c callsctl -n '__callsctl_at callsctl check' -a stun -d 'Find this host\'s public address, the RTT to a STUN server and the NAT behaviour.'
complete -c callsctl -n '__callsctl_at callsctl check' -a rtc -d 'Probe a running server\'s media ports with STUN and check its advertised ICE address.'
complete -c callsctl -n '__callsctl_at callsctl check' -a rtcd -d 'Open a real session on an rtcd node, as the Calls plugin does, and report each stage.'
complete -c callsctl -n '__callsctl_at callsctl check' -a webrtc -d 'Make a real two-party audio call through the server and report each stage.'
complete -c callsctl -n '__callsctl_at callsctl check' -a all -d 'Run every relevant check against one server and print one report.'
complete -c callsctl -n '__callsctl_at callsctl check' -a turn -d 'Allocate a relay on a TURN server and send data through it and back.'
complete -c callsctl -n '__callsctl_at callsctl check' -l help -s h -d 'Show this message and exit.'

# callsctl check udp
complete -c callsctl -n '__callsctl_at callsctl check udp' -l host -s H -x -d 'Server address or name (the ICE host override / public IP clients use).'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l port -s p -x -d 'Port to probe.'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l message -s m -x -d 'Text to send (a newline is added, as nc sends a typed line).'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l count -s c -x -d 'Datagrams to send.'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l timeout -s t -x -d 'How long to wait for each reply.'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l stun -d 'Send a STUN Binding Request instead of text: the callsctl SFU answers it, so a running se…'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l json -d 'Print the result as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check udp' -l help -s h -d 'Show this message and exit.'

# callsctl check tcp
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l host -s H -x -d 'Server address or name (the ICE host override / public IP clients use).'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l port -s p -x -d 'Port to probe.'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l message -s m -x -d 'Text to send (a newline is added, as nc sends a typed line).'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l count -s c -x -d 'Connections to open (each sends the message once).'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l timeout -s t -x -d 'How long to wait for the connection and the reply.'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l stun -d 'Send a STUN Binding Request instead of text: the callsctl SFU answers it, so a running se…'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l json -d 'Print the result as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check tcp' -l help -s h -d 'Show this message and exit.'

# callsctl check listen
complete -c callsctl -n '__callsctl_at callsctl check listen' -l udp -s u -d 'Listen on UDP (the default).'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l tcp -d 'Listen on TCP (the ICE-TCP fallback).'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l port -s p -x -d 'Port to listen on.'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l bind -s b -x -d 'Local address to listen on (0.0.0.0 = all IPv4, :: = all).'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l echo -s e -d 'Send every packet back, so `check udp` gets an answer.'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l count -s c -x -d 'Stop after N packets.'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l duration -s d -x -d 'Stop after this long (default: until Ctrl-C).'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l json -d 'Print the result as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check listen' -l help -s h -d 'Show this message and exit.'

# callsctl check capture
complete -c callsctl -n '__callsctl_at callsctl check capture' -l port -s p -x -d 'Media port to watch (UDP and ICE-TCP).'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l iface -s i -x -d 'Interface to capture on, or \'any\' for all of them.'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l duration -s d -x -d 'Stop after this long (30s, 2m).'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l count -s c -x -d 'Stop after N packets.'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l write -s w -r -F -d 'Also write the packets to FILE (pcap; `tcpdump -r FILE`, Wireshark).'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l host -x -d 'Only packets to or from this host.'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l json -d 'Print the result as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check capture' -l help -s h -d 'Show this message and exit.'

# callsctl check config
complete -c callsctl -n '__callsctl_at callsctl check config' -l config -s f -r -F -d 'Serve config file (TOML) to validate; the CALLSCTL_* environment is applied on top.'
complete -c callsctl -n '__callsctl_at callsctl check config' -l json -d 'Print the result as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check config' -l help -s h -d 'Show this message and exit.'

# callsctl check stun
complete -c callsctl -n '__callsctl_at callsctl check stun' -l server -s s -x -d 'STUN server as HOST:PORT or stun:HOST:PORT (the seed deployment\'s default).'
complete -c callsctl -n '__callsctl_at callsctl check stun' -l timeout -s t -x -d 'Seconds to wait for each STUN answer (retransmitting meanwhile).'
complete -c callsctl -n '__callsctl_at callsctl check stun' -l json -d 'Print the results as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check stun' -l help -s h -d 'Show this message and exit.'

# callsctl check rtc
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l host -s H -x -d 'Server host name or IP, as clients reach it (the ice_host_override, if set).'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l udp-port -x -d 'Media port over UDP.'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l tcp-port -x -d 'ICE-TCP fallback port.'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l api-port -x -d 'HTTP API port (for GET /version).'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l api-url -x -d 'API base URL when it is not http://HOST:API_PORT (TLS, reverse proxy).'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l timeout -s t -x -d 'Seconds to wait for each answer.'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l json -d 'Print the results as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check rtc' -l help -s h -d 'Show this message and exit.'

# callsctl check rtcd
complete -c callsctl -n '__callsctl_at callsctl check rtcd' -l url -x -d 'rtcd\'s API as the plugin is configured with it: http://CLIENT_ID:AUTH_KEY@HOST:8045.'
complete -c callsctl -n '__callsctl_at callsctl check rtcd' -l timeout -s t -x -d 'Seconds each stage may take.'
complete -c callsctl -n '__callsctl_at callsctl check rtcd' -l json -d 'Print results as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check rtcd' -l help -s h -d 'Show this message and exit.'

# callsctl check webrtc
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l host -s H -x -d 'callsctl server host name or IP.'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l api-port -x -d 'API port.'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l api-url -x -d 'API base URL when not http://HOST:API_PORT (https, proxy).'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l token -x -d 'A callsctl join token (both test participants use it); with --mattermost, a personal acce…'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l data-dir -x -d 'A local server\'s data dir: mint test tokens with its jwt_secret (read, never created). [d…'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l mattermost -x -d 'Test a Mattermost server with the Calls plugin instead: its site URL (https://chat.exampl…'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l channel -x -d 'With --mattermost: id of a test channel to start the call in.'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l config -x -d 'With --mattermost: a TOML file with url, token and channel (keeps the token off the comma…'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l force-turn -d 'With --mattermost: relay candidates only, through the TURN servers the Calls plugin confi…'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l force-tcp -d 'With --mattermost: media over TCP, relayed by a TURN server the plugin configures with ?t…'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l timeout -s t -x -d 'Seconds each stage may take.'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l json -d 'Print results as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check webrtc' -l help -s h -d 'Show this message and exit.'

# callsctl check all
complete -c callsctl -n '__callsctl_at callsctl check all' -l host -s H -x -d 'Server host name or IP, as clients reach it.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l udp-port -x -d 'Media port over UDP.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l tcp-port -x -d 'ICE-TCP fallback port.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l api-port -x -d 'HTTP API port.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l api-url -x -d 'API base URL when it is not http://HOST:API_PORT (TLS, reverse proxy).'
complete -c callsctl -n '__callsctl_at callsctl check all' -l stun-server -x -d 'Also run the STUN/NAT check against this server.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l with-stun -d 'Also run the STUN/NAT check against stun.global.calls.mattermost.com:3478.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l timeout -s t -x -d 'Seconds to wait for each answer.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l token -x -d 'A join token: also make a real test call (check webrtc); with --mattermost, a personal ac…'
complete -c callsctl -n '__callsctl_at callsctl check all' -l rtcd-url -x -d 'Also open a real session on this rtcd (check rtcd): http://CLIENT_ID:AUTH_KEY@HOST:8045.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l mattermost -x -d 'Also make a real call through this Mattermost site (check webrtc --mattermost); needs --t…'
complete -c callsctl -n '__callsctl_at callsctl check all' -l channel -x -d 'With --mattermost: id of a test channel.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l mattermost-config -x -d 'With --mattermost: TOML with url, token, channel.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l data-dir -x -d 'A local server\'s data dir: also make a real test call, with tokens signed by its jwt_secr…'
complete -c callsctl -n '__callsctl_at callsctl check all' -l json -d 'Print the report as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check all' -l help -s h -d 'Show this message and exit.'

# callsctl check turn
complete -c callsctl -n '__callsctl_at callsctl check turn' -l server -s s -x -d 'TURN server URI: turn:HOST[:PORT][?transport=udp|tcp]; without ?transport both UDP and TC…'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l secret -x -d 'Static auth secret (coturn static-auth-secret, Calls turn_static_auth_secret): REST crede…'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l user -s u -x -d 'Static TURN user; with --secret, the name part of the REST username (default callsctl-che…'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l password -s p -x -d 'Password of the static --user.'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l realm -x -d 'The realm you expect the server to announce (warns if not).'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l peer-ip -x -d 'Local address for the echo peer the relay sends to (default: the address this host uses t…'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l timeout -s t -x -d 'Seconds to wait for each answer.'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l json -d 'Print the results as JSON.'
complete -c callsctl -n '__callsctl_at callsctl check turn' -l help -s h -d 'Show this message and exit.'

# callsctl calls
complete -c callsctl -n '__callsctl_at callsctl calls' -a list -d 'Live calls: participants, age, host, screen sharer, bitrates.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a show -d 'One call: every session with its state, ICE pair, quality and tracks.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a mute -d 'Mute a participant (the server stops forwarding its audio; its client is told).'
complete -c callsctl -n '__callsctl_at callsctl calls' -a mute-others -d 'Mute everyone in the call except SESSION.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a stop-screen -d 'Stop a participant\'s screen share.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a lower-hand -d 'Lower a participant\'s raised hand.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a remove -d 'Remove a participant from the call.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a end -d 'End the call for everyone.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a host -d 'Make SESSION the host of the call.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a enable -d 'Allow calls in CALL (needed in test mode, --no-default-enabled).'
complete -c callsctl -n '__callsctl_at callsctl calls' -a disable -d 'Refuse new joins in CALL (participants already in it stay).'
complete -c callsctl -n '__callsctl_at callsctl calls' -a settings -d 'Show (or change) CALL\'s settings: enabled and max participants.'
complete -c callsctl -n '__callsctl_at callsctl calls' -a history -d 'Past and live calls with who was in them (kept across restarts).'
complete -c callsctl -n '__callsctl_at callsctl calls' -l server -s s -x -d 'Base URL of callsctl serve\'s API port. [default: http://127.0.0.1:8045]'
complete -c callsctl -n '__callsctl_at callsctl calls' -l admin-key -x -d 'Admin API key (prefer the env var or a file: flags show in ps).'
complete -c callsctl -n '__callsctl_at callsctl calls' -l admin-key-file -x -d 'File holding the admin API key (the server\'s <data dir>/admin_key).'
complete -c callsctl -n '__callsctl_at callsctl calls' -l ca-cert -x -d 'PEM certificate to trust for https (e.g. the server\'s self-signed one).'
complete -c callsctl -n '__callsctl_at callsctl calls' -l insecure -s k -d 'Do not verify the server\'s TLS certificate.'
complete -c callsctl -n '__callsctl_at callsctl calls' -l client-config -x -d 'Client config TOML. [default: $XDG_CONFIG_HOME/callsctl/client.toml]'
complete -c callsctl -n '__callsctl_at callsctl calls' -l timeout -x -d 'Seconds to wait for the server.'
complete -c callsctl -n '__callsctl_at callsctl calls' -l help -s h -d 'Show this message and exit.'

# callsctl calls list
complete -c callsctl -n '__callsctl_at callsctl calls list' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls list' -l help -s h -d 'Show this message and exit.'

# callsctl calls show
complete -c callsctl -n '__callsctl_at callsctl calls show' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls show' -l help -s h -d 'Show this message and exit.'

# callsctl calls mute
complete -c callsctl -n '__callsctl_at callsctl calls mute' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls mute' -l help -s h -d 'Show this message and exit.'

# callsctl calls mute-others
complete -c callsctl -n '__callsctl_at callsctl calls mute-others' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls mute-others' -l help -s h -d 'Show this message and exit.'

# callsctl calls stop-screen
complete -c callsctl -n '__callsctl_at callsctl calls stop-screen' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls stop-screen' -l help -s h -d 'Show this message and exit.'

# callsctl calls lower-hand
complete -c callsctl -n '__callsctl_at callsctl calls lower-hand' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls lower-hand' -l help -s h -d 'Show this message and exit.'

# callsctl calls remove
complete -c callsctl -n '__callsctl_at callsctl calls remove' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls remove' -l help -s h -d 'Show this message and exit.'

# callsctl calls end
complete -c callsctl -n '__callsctl_at callsctl calls end' -l reason -x -d 'Shown to the participants.'
complete -c callsctl -n '__callsctl_at callsctl calls end' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls end' -l help -s h -d 'Show this message and exit.'

# callsctl calls host
complete -c callsctl -n '__callsctl_at callsctl calls host' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls host' -l help -s h -d 'Show this message and exit.'

# callsctl calls enable
complete -c callsctl -n '__callsctl_at callsctl calls enable' -l max-participants -x -d 'Also limit this call\'s size.'
complete -c callsctl -n '__callsctl_at callsctl calls enable' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls enable' -l help -s h -d 'Show this message and exit.'

# callsctl calls disable
complete -c callsctl -n '__callsctl_at callsctl calls disable' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls disable' -l help -s h -d 'Show this message and exit.'

# callsctl calls settings
complete -c callsctl -n '__callsctl_at callsctl calls settings' -l max-participants -x -d 'Set this call\'s size limit.'
complete -c callsctl -n '__callsctl_at callsctl calls settings' -l reset -d 'Forget this call\'s overrides (server defaults apply).'
complete -c callsctl -n '__callsctl_at callsctl calls settings' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls settings' -l help -s h -d 'Show this message and exit.'

# callsctl calls history
complete -c callsctl -n '__callsctl_at callsctl calls history' -l limit -s n -x -d 'How many calls, newest first.'
complete -c callsctl -n '__callsctl_at callsctl calls history' -l call -x -d 'Only this call id.'
complete -c callsctl -n '__callsctl_at callsctl calls history' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl calls history' -l help -s h -d 'Show this message and exit.'

# callsctl record
complete -c callsctl -n '__callsctl_at callsctl record' -a start -d 'Start recording a live call (everyone in it sees that it is recorded).'
complete -c callsctl -n '__callsctl_at callsctl record' -a stop -d 'Stop a recording: the files are finished and the MP4 composed.'
complete -c callsctl -n '__callsctl_at callsctl record' -a list -d 'Recordings (and their transcriptions, captions jobs), newest first.'
complete -c callsctl -n '__callsctl_at callsctl record' -a get -d 'One recording: state, times, participants, files (or its worker\'s log).'
complete -c callsctl -n '__callsctl_at callsctl record' -a rm -d 'Delete a finished recording: its files and its job.'
complete -c callsctl -n '__callsctl_at callsctl record' -a transcribe -d 'Transcribe a finished recording: transcript.vtt and transcript.txt beside it.'
complete -c callsctl -n '__callsctl_at callsctl record' -a transcript -d 'Print (or save) the transcript of a recording.'
complete -c callsctl -n '__callsctl_at callsctl record' -a captions -d 'Start (or --stop) live captions in a call: everyone sees each speaker\'s words.'
complete -c callsctl -n '__callsctl_at callsctl record' -l server -s s -x -d 'Base URL of callsctl serve\'s API port. [default: http://127.0.0.1:8045]'
complete -c callsctl -n '__callsctl_at callsctl record' -l admin-key -x -d 'Admin API key (prefer the env var or a file: flags show in ps).'
complete -c callsctl -n '__callsctl_at callsctl record' -l admin-key-file -x -d 'File holding the admin API key (the server\'s <data dir>/admin_key).'
complete -c callsctl -n '__callsctl_at callsctl record' -l ca-cert -x -d 'PEM certificate to trust for https (e.g. the server\'s self-signed one).'
complete -c callsctl -n '__callsctl_at callsctl record' -l insecure -s k -d 'Do not verify the server\'s TLS certificate.'
complete -c callsctl -n '__callsctl_at callsctl record' -l client-config -x -d 'Client config TOML. [default: $XDG_CONFIG_HOME/callsctl/client.toml]'
complete -c callsctl -n '__callsctl_at callsctl record' -l timeout -x -d 'Seconds to wait for the server.'
complete -c callsctl -n '__callsctl_at callsctl record' -l help -s h -d 'Show this message and exit.'

# callsctl record start
complete -c callsctl -n '__callsctl_at callsctl record start' -l max-duration -x -d 'Stop after this many seconds. [default: the server\'s recording_max_duration]'
complete -c callsctl -n '__callsctl_at callsctl record start' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record start' -l help -s h -d 'Show this message and exit.'

# callsctl record stop
complete -c callsctl -n '__callsctl_at callsctl record stop' -l wait -l no-wait -d 'Wait until the files are finished and composed.'
complete -c callsctl -n '__callsctl_at callsctl record stop' -l wait-timeout -x -d 'Seconds --wait waits at most.'
complete -c callsctl -n '__callsctl_at callsctl record stop' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record stop' -l help -s h -d 'Show this message and exit.'

# callsctl record list
complete -c callsctl -n '__callsctl_at callsctl record list' -l call -x -d 'Only this call id.'
complete -c callsctl -n '__callsctl_at callsctl record list' -l limit -s n -x -d 'How many, newest first.'
complete -c callsctl -n '__callsctl_at callsctl record list' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record list' -l help -s h -d 'Show this message and exit.'

# callsctl record get
complete -c callsctl -n '__callsctl_at callsctl record get' -l logs -d 'Print the worker\'s log instead.'
complete -c callsctl -n '__callsctl_at callsctl record get' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record get' -l help -s h -d 'Show this message and exit.'

# callsctl record rm
complete -c callsctl -n '__callsctl_at callsctl record rm' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record rm' -l help -s h -d 'Show this message and exit.'

# callsctl record transcribe
complete -c callsctl -n '__callsctl_at callsctl record transcribe' -l wait -l no-wait -d 'Wait until the transcript is written.'
complete -c callsctl -n '__callsctl_at callsctl record transcribe' -l wait-timeout -x -d 'Seconds --wait waits at most.'
complete -c callsctl -n '__callsctl_at callsctl record transcribe' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record transcribe' -l help -s h -d 'Show this message and exit.'

# callsctl record transcript
complete -c callsctl -n '__callsctl_at callsctl record transcript' -l vtt -d 'Print the WebVTT file instead of the plain text.'
complete -c callsctl -n '__callsctl_at callsctl record transcript' -l output -s o -x -d 'Write it to this file.'
complete -c callsctl -n '__callsctl_at callsctl record transcript' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record transcript' -l help -s h -d 'Show this message and exit.'

# callsctl record captions
complete -c callsctl -n '__callsctl_at callsctl record captions' -l stop -d 'Stop the call\'s captions.'
complete -c callsctl -n '__callsctl_at callsctl record captions' -l json -d 'Print the server\'s JSON answer.'
complete -c callsctl -n '__callsctl_at callsctl record captions' -l help -s h -d 'Show this message and exit.'

# callsctl fleet
complete -c callsctl -n '__callsctl_at callsctl fleet' -a list -d 'Every registered node: state, load, calls, sessions, addresses.'
complete -c callsctl -n '__callsctl_at callsctl fleet' -a drain -d 'Stop new calls on NODE; its calls go on, then it exits (as on SIGTERM).'
complete -c callsctl -n '__callsctl_at callsctl fleet' -l help -s h -d 'Show this message and exit.'

# callsctl fleet list
complete -c callsctl -n '__callsctl_at callsctl fleet list' -l cluster -x -d 'The fleet\'s Redis URL (the nodes\' --cluster).'
complete -c callsctl -n '__callsctl_at callsctl fleet list' -l config -r -F -d 'A serve config whose `cluster` to use.'
complete -c callsctl -n '__callsctl_at callsctl fleet list' -l json -d 'Print {nodes: [...]} as JSON.'
complete -c callsctl -n '__callsctl_at callsctl fleet list' -l help -s h -d 'Show this message and exit.'

# callsctl fleet drain
complete -c callsctl -n '__callsctl_at callsctl fleet drain' -l cluster -x -d 'The fleet\'s Redis URL (the nodes\' --cluster).'
complete -c callsctl -n '__callsctl_at callsctl fleet drain' -l config -r -F -d 'A serve config whose `cluster` to use.'
complete -c callsctl -n '__callsctl_at callsctl fleet drain' -l wait -d 'Wait until the node has left the fleet.'
complete -c callsctl -n '__callsctl_at callsctl fleet drain' -l timeout -x -d 'With --wait: give up after this long.'
complete -c callsctl -n '__callsctl_at callsctl fleet drain' -l json -d 'Print the outcome as JSON.'
complete -c callsctl -n '__callsctl_at callsctl fleet drain' -l help -s h -d 'Show this message and exit.'
