# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gre_global_optspecs
    string join \n n/netns= I/instance= v/verbose h/help V/version
end

function __fish_gre_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gre_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gre_using_subcommand
    set -l cmd (__fish_gre_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gre -n "__fish_gre_needs_command" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_needs_command" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_needs_command" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gre -n "__fish_gre_needs_command" -s V -l version -d 'Print version'
complete -c gre -n "__fish_gre_needs_command" -f -a "up" -d 'Create the tunnel netdevs, load and attach the datapath, fill its maps, and exit. Over a running instance: make its routes and static peers the file\'s and reload the programs (tunnels and interfaces must be unchanged)'
complete -c gre -n "__fish_gre_needs_command" -f -a "down" -d 'Remove the instance: its tunnel netdevs, programs, links and maps'
complete -c gre -n "__fish_gre_needs_command" -f -a "reload" -d 'Replace the programs of a running instance with this binary\'s, keeping its maps and links: atomic per hook, no packet lost'
complete -c gre -n "__fish_gre_needs_command" -f -a "show" -d 'Show tunnels, counters and drops of a running instance'
complete -c gre -n "__fish_gre_needs_command" -f -a "showconf" -d 'The running configuration, as TOML that `gre up -c` takes again'
complete -c gre -n "__fish_gre_needs_command" -f -a "tunnel" -d 'Add or remove tunnels of a running instance'
complete -c gre -n "__fish_gre_needs_command" -f -a "peer" -d 'Add or remove static peers of multipoint tunnels of a running instance'
complete -c gre -n "__fish_gre_needs_command" -f -a "route" -d 'Add or remove overlay routes of a running instance'
complete -c gre -n "__fish_gre_needs_command" -f -a "stats" -d 'Live rates: packets and bits per second in and out of each tunnel, drops per second'
complete -c gre -n "__fish_gre_needs_command" -f -a "log" -d 'Follow the datapath\'s slow-path events (resolutions asked, redirects wanted) as they happen; the daemon\'s own log is its standard error'
complete -c gre -n "__fish_gre_needs_command" -f -a "daemon" -d 'Run what needs a process: NHRP, keepalives and tunnel state, GRE that arrived in fragments. Stays in the foreground until SIGINT or SIGTERM; the datapath does not depend on it and keeps forwarding after it stops'
complete -c gre -n "__fish_gre_needs_command" -f -a "nhrp" -d 'NHRP tools'
complete -c gre -n "__fish_gre_needs_command" -f -a "gen-docs" -d 'Write the man pages and shell completions generated from this definition (packaging: `cargo xtask man` keeps the copies in docs/ up to date)'
complete -c gre -n "__fish_gre_needs_command" -f -a "check" -d 'Check a configuration file and print what it would set up; changes nothing'
complete -c gre -n "__fish_gre_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand up" -s c -l config -d 'Configuration file (TOML)' -r -F
complete -c gre -n "__fish_gre_using_subcommand up" -l iface -d 'Use this underlay interface for every tunnel instead of those in the file' -r
complete -c gre -n "__fish_gre_using_subcommand up" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand up" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand up" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand up" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand down" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand down" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand down" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand down" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand reload" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand reload" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand reload" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand reload" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand show" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand show" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand show" -s j -l json -d 'JSON on one line'
complete -c gre -n "__fish_gre_using_subcommand show" -s p -l pretty -d 'Pretty-printed JSON'
complete -c gre -n "__fish_gre_using_subcommand show" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gre -n "__fish_gre_using_subcommand showconf" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand showconf" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand showconf" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand showconf" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -f -a "add" -d 'Add the tunnels of FILE (with their routes and peers): [[tunnel]] entries as in `gre up`, on interfaces the instance has (declared in FILE as there)'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -f -a "del" -d 'Remove a tunnel, with its routes and peers'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and not __fish_seen_subcommand_from add del help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from add" -s c -l config -r -F
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from add" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from add" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from add" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from del" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from del" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from del" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from del" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add the tunnels of FILE (with their routes and peers): [[tunnel]] entries as in `gre up`, on interfaces the instance has (declared in FILE as there)'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from help" -f -a "del" -d 'Remove a tunnel, with its routes and peers'
complete -c gre -n "__fish_gre_using_subcommand tunnel; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -f -a "add" -d 'A static peer: overlay address OVERLAY is at NBMA address NBMA'
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -f -a "del" -d 'Remove a peer (static, or one NHRP learned)'
complete -c gre -n "__fish_gre_using_subcommand peer; and not __fish_seen_subcommand_from add del help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from add" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from add" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from add" -l multicast -d 'Replicate multicast to it (`ip nhrp map multicast`)'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from add" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from del" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from del" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from del" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from del" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from help" -f -a "add" -d 'A static peer: overlay address OVERLAY is at NBMA address NBMA'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from help" -f -a "del" -d 'Remove a peer (static, or one NHRP learned)'
complete -c gre -n "__fish_gre_using_subcommand peer; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -f -a "add" -d 'Route PREFIX into TUNNEL (in the kernel and in the datapath)'
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -f -a "del" -d 'Remove a route'
complete -c gre -n "__fish_gre_using_subcommand route; and not __fish_seen_subcommand_from add del help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from add" -l via -d 'Multipoint: the overlay next hop (by default the destination itself)' -r
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from add" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from add" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from add" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from del" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from del" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from del" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from del" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "add" -d 'Route PREFIX into TUNNEL (in the kernel and in the datapath)'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "del" -d 'Remove a route'
complete -c gre -n "__fish_gre_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand stats" -l interval -d 'Seconds each reading covers' -r
complete -c gre -n "__fish_gre_using_subcommand stats" -s c -l count -d 'With --watch: stop after this many readings' -r
complete -c gre -n "__fish_gre_using_subcommand stats" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand stats" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand stats" -s w -l watch -d 'Keep printing, every interval, until interrupted'
complete -c gre -n "__fish_gre_using_subcommand stats" -s j -l json -d 'JSON, one line per reading'
complete -c gre -n "__fish_gre_using_subcommand stats" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand stats" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand log" -s c -l count -d 'Stop after this many lines' -r
complete -c gre -n "__fish_gre_using_subcommand log" -l level -d 'Set the daemon\'s log level instead (an env-filter directive: `debug`, `info`, `info,gre_user::nhrp=trace` …)' -r
complete -c gre -n "__fish_gre_using_subcommand log" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand log" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand log" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand log" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand daemon" -s c -l config -d 'Bring the instance up from this file first, unless it is up already (what a service unit runs)' -r -F
complete -c gre -n "__fish_gre_using_subcommand daemon" -l metrics -d 'Serve Prometheus metrics here (`GET /metrics`), instead of the config\'s `[metrics]`' -r
complete -c gre -n "__fish_gre_using_subcommand daemon" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand daemon" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand daemon" -l purge-on-exit -d 'On exit, withdraw this node\'s NHRP registrations (it leaves for good). Without it a stop is a restart: registrations, bindings and shortcuts stay for the next daemon'
complete -c gre -n "__fish_gre_using_subcommand daemon" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand daemon" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -f -a "dump" -d 'Decode the NHRP messages of a capture (pcap or pcapng), or live on an interface, one line each'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -f -a "clear" -d 'Forget dynamic NHRP state in the running daemon: `cache` (every dynamic peer, registration and shortcut), `shortcuts`, or one peer\'s overlay ADDRESS'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and not __fish_seen_subcommand_from dump clear help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s i -l interface -d 'Capture live on this interface (both directions) until interrupted' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s c -l count -d 'Stop after this many NHRP messages' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s j -l json -d 'JSON on one line per message, with every field'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from dump" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from clear" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from clear" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from clear" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from clear" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from help" -f -a "dump" -d 'Decode the NHRP messages of a capture (pcap or pcapng), or live on an interface, one line each'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from help" -f -a "clear" -d 'Forget dynamic NHRP state in the running daemon: `cache` (every dynamic peer, registration and shortcut), `shortcuts`, or one peer\'s overlay ADDRESS'
complete -c gre -n "__fish_gre_using_subcommand nhrp; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand gen-docs" -l out -d 'Directory to write `man/` and `completions/` into' -r -F
complete -c gre -n "__fish_gre_using_subcommand gen-docs" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand gen-docs" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand gen-docs" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand gen-docs" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand check" -s c -l config -r -F
complete -c gre -n "__fish_gre_using_subcommand check" -s n -l netns -d 'Run in this network namespace (as `ip -n`)' -r
complete -c gre -n "__fish_gre_using_subcommand check" -s I -l instance -d 'Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>' -r
complete -c gre -n "__fish_gre_using_subcommand check" -s v -l verbose -d 'More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead)'
complete -c gre -n "__fish_gre_using_subcommand check" -s h -l help -d 'Print help'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "up" -d 'Create the tunnel netdevs, load and attach the datapath, fill its maps, and exit. Over a running instance: make its routes and static peers the file\'s and reload the programs (tunnels and interfaces must be unchanged)'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "down" -d 'Remove the instance: its tunnel netdevs, programs, links and maps'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "reload" -d 'Replace the programs of a running instance with this binary\'s, keeping its maps and links: atomic per hook, no packet lost'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "show" -d 'Show tunnels, counters and drops of a running instance'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "showconf" -d 'The running configuration, as TOML that `gre up -c` takes again'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "tunnel" -d 'Add or remove tunnels of a running instance'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "peer" -d 'Add or remove static peers of multipoint tunnels of a running instance'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "route" -d 'Add or remove overlay routes of a running instance'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "stats" -d 'Live rates: packets and bits per second in and out of each tunnel, drops per second'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "log" -d 'Follow the datapath\'s slow-path events (resolutions asked, redirects wanted) as they happen; the daemon\'s own log is its standard error'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "daemon" -d 'Run what needs a process: NHRP, keepalives and tunnel state, GRE that arrived in fragments. Stays in the foreground until SIGINT or SIGTERM; the datapath does not depend on it and keeps forwarding after it stops'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "nhrp" -d 'NHRP tools'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "gen-docs" -d 'Write the man pages and shell completions generated from this definition (packaging: `cargo xtask man` keeps the copies in docs/ up to date)'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "check" -d 'Check a configuration file and print what it would set up; changes nothing'
complete -c gre -n "__fish_gre_using_subcommand help; and not __fish_seen_subcommand_from up down reload show showconf tunnel peer route stats log daemon nhrp gen-docs check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from tunnel" -f -a "add" -d 'Add the tunnels of FILE (with their routes and peers): [[tunnel]] entries as in `gre up`, on interfaces the instance has (declared in FILE as there)'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from tunnel" -f -a "del" -d 'Remove a tunnel, with its routes and peers'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from peer" -f -a "add" -d 'A static peer: overlay address OVERLAY is at NBMA address NBMA'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from peer" -f -a "del" -d 'Remove a peer (static, or one NHRP learned)'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "add" -d 'Route PREFIX into TUNNEL (in the kernel and in the datapath)'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "del" -d 'Remove a route'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from nhrp" -f -a "dump" -d 'Decode the NHRP messages of a capture (pcap or pcapng), or live on an interface, one line each'
complete -c gre -n "__fish_gre_using_subcommand help; and __fish_seen_subcommand_from nhrp" -f -a "clear" -d 'Forget dynamic NHRP state in the running daemon: `cache` (every dynamic peer, registration and shortcut), `shortcuts`, or one peer\'s overlay ADDRESS'
