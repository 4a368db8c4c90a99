#!/bin/bash
# Watch nfsentry catch a port scan, in a throw-away pair of network namespaces.
#
#   examples/try-it.sh [--shell]        (as root; `make try` bootstraps and runs it)
#
# 1. makes two network namespaces joined by a veth pair: "victim" 198.18.0.1 and "scanner"
#    198.18.0.2 (198.18.0.0/15, reserved for network benchmarks by RFC 2544);
# 2. writes a configuration into a new temporary directory (database, events file, control
#    socket, ignore file: all in there; syslog off) and runs the daemon in the victim namespace;
# 3. scans the victim from the scanner with `nmap -n`;
# 4. shows what nfsentry did: the scanner's pings go unanswered, `nfsentry blocked`, `history`,
#    `status` (and `stats` when this nfsentry has that command);
# 5. removes the namespaces (their firewall goes with them) and the temporary directory, also on
#    failure, Ctrl-C or SIGTERM.
#
# Nothing is loaded into this machine's own firewall and nothing is written to /etc, /var/lib or
# /var/log: every nfsentry command runs inside the victim namespace with --config pointing into the
# temporary directory. (`ip netns add` makes its usual entries under /run/netns; they go with
# the namespaces.)
#
#   --shell     after the demo, open a shell in the victim namespace where `nfsentry` means this
#               daemon (try `nfsentry unblock 198.18.0.2`, `nfsentry block -f -`, ...); `scan`
#               scans again from the scanner; leaving the shell cleans everything up
#   NFSENTRY=/path/to/nfsentry   the program to run (default: this repository's .venv, else PATH)
#   TMPDIR      where the temporary directory is made (default /tmp)

set -euo pipefail

VICTIM_IP=198.18.0.1
SCANNER_IP=198.18.0.2
NMAP_ARGS=(-n -Pn -sS -T4 --max-retries 0 --min-rate 500 --host-timeout 60s -p 1-1024)

# alive PID: running (a child that has exited but was not waited for is a zombie: not alive)
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
say() { printf '\n==> %s\n' "$*"; }
die() {
	echo "try-it: $*" >&2
	exit 1
}

SHELL_AFTER=0
for arg in "$@"; do
	case "$arg" in
	--shell) SHELL_AFTER=1 ;;
	-h | --help)
		sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*) die "unknown argument '$arg' (use --shell or --help)" ;;
	esac
done

[ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces); run it with sudo"
for tool in ip nmap; do
	command -v "$tool" >/dev/null || die "needs $tool (apt-get install $([ "$tool" = ip ] && echo iproute2 || echo "$tool"))"
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${NFSENTRY:-}" ]; then
	if [ -x "$REPO/.venv/bin/nfsentry" ]; then NFSENTRY=$REPO/.venv/bin/nfsentry; else NFSENTRY=$(command -v nfsentry || true); fi
fi
[ -n "$NFSENTRY" ] && [ -x "$NFSENTRY" ] || die "no nfsentry program: run 'make venv' in $REPO first (or set NFSENTRY=)"

# -- the throw-away world, and its removal ----------------------------------------------------------
TAG="nfstry$$"
VICTIM="$TAG-victim"
SCANNER="$TAG-scanner"
TMP=""
DAEMON_PID=""
NAMESPACES=()

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	say "cleaning up"
	# the daemon (and anything else still running in the namespaces): TERM, 10 s, then KILL
	local pids="$DAEMON_PID" ns
	for ns in "${NAMESPACES[@]}"; do pids+=" $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"; done
	for pid in $pids; do kill -TERM "$pid" 2>/dev/null; done
	for _ in $(seq 100); do
		local left=0
		for pid in $pids; do alive "$pid" && left=1; done
		[ "$left" = 0 ] && break
		sleep 0.1
	done
	for pid in $pids; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
	[ -n "$DAEMON_PID" ] && wait "$DAEMON_PID" 2>/dev/null
	for ns in "${NAMESPACES[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
	[ "${#NAMESPACES[@]}" -gt 0 ] && echo "deleted network namespaces ${NAMESPACES[*]} (and the firewall in them)"
	if [ -n "$TMP" ] && [ -d "$TMP" ]; then
		rm -rf -- "$TMP"
		echo "deleted $TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nfsentry-try.XXXXXX")

say "a victim and a scanner: network namespaces $VICTIM ($VICTIM_IP) and $SCANNER ($SCANNER_IP), joined by a veth pair"
for ns in "$VICTIM" "$SCANNER"; do
	ip netns add "$ns"
	NAMESPACES+=("$ns")
	ip -n "$ns" link set lo up
done
# made inside the victim namespace, its peer moved straight into the scanner's: nothing in ours
ip -n "$VICTIM" link add eth0 type veth peer name eth0 netns "$SCANNER"
ip -n "$VICTIM" addr add "$VICTIM_IP/30" dev eth0
ip -n "$SCANNER" addr add "$SCANNER_IP/30" dev eth0
ip -n "$VICTIM" link set eth0 up
ip -n "$SCANNER" link set eth0 up
# belt and braces: the victim really is another network namespace than this shell's
[ "$(ip netns exec "$VICTIM" readlink /proc/self/ns/net)" != "$(readlink /proc/self/ns/net)" ] ||
	die "the victim namespace is this machine's own network namespace: refusing to go on"
for _ in $(seq 100); do
	ip netns exec "$SCANNER" ping -c1 -W1 "$VICTIM_IP" >/dev/null 2>&1 && break
	sleep 0.2
done

CONFIG=$TMP/nfsentry.toml
touch "$TMP/ignore"
cat >"$CONFIG" <<EOF
# nfsentry try-it: the built-in defaults, with every path in $TMP
[storage]
state_dir = "$TMP/state"

[daemon]
control_socket = "$TMP/run/control.sock"

[logging]
syslog = false
json_file = "$TMP/events.jsonl"

[ignore]
files = ["$TMP/ignore"]
EOF

# every nfsentry command of the demo: in the victim namespace, with the temporary configuration
in_victim() { ip netns exec "$VICTIM" "$@"; }
nfs() {
	printf '\nvictim# nfsentry %s\n' "$*"
	in_victim "$NFSENTRY" "$@" --config "$CONFIG"
}

say "starting the daemon in $VICTIM (configuration $CONFIG: the defaults, paths in $TMP)"
# (not through a function: $! must be the daemon itself; `ip netns exec` execs it in place)
ip netns exec "$VICTIM" "$NFSENTRY" run --foreground --config "$CONFIG" >"$TMP/daemon.out" 2>"$TMP/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 600); do
	grep -q "is active" "$TMP/daemon.log" && break
	alive "$DAEMON_PID" || {
		cat "$TMP/daemon.log" >&2
		die "the daemon exited before it was active"
	}
	sleep 0.2
done
grep -q "is active" "$TMP/daemon.log" || {
	cat "$TMP/daemon.log" >&2
	die "the daemon did not become active within 120 s"
}
grep "is active" "$TMP/daemon.log" | sed 's/^/  /'

say "the scanner can reach the victim"
printf 'scanner# ping -c1 -W1 %s\n' "$VICTIM_IP"
ip netns exec "$SCANNER" ping -c1 -W1 "$VICTIM_IP" | grep -E "packets transmitted" || true

say "the scanner scans the victim's first 1024 TCP ports"
printf 'scanner# nmap %s %s\n' "${NMAP_ARGS[*]}" "$VICTIM_IP"
ip netns exec "$SCANNER" nmap "${NMAP_ARGS[@]}" "$VICTIM_IP" </dev/null | grep -vE "^(Starting Nmap|Stats: |.* Timing: About |$)" || true

say "the scanner is blocked: the victim's kernel drops everything it sends"
printf 'scanner# ping -c1 -W1 %s\n' "$VICTIM_IP"
ip netns exec "$SCANNER" ping -c1 -W1 "$VICTIM_IP" | grep -E "packets transmitted" || true

say "what nfsentry says (every command runs in $VICTIM with --config $CONFIG)"
for _ in $(seq 100); do # the block is in the kernel at once; its record follows off the packet path
	rows=$(in_victim "$NFSENTRY" history --config "$CONFIG" -o tsv 2>/dev/null || true)
	awk -F'\t' -v ip="$SCANNER_IP" '$3 == "block" && $4 == ip { found = 1 } END { exit !found }' <<<"$rows" && break
	sleep 0.2
done
nfs blocked
nfs history
nfs status
if in_victim "$NFSENTRY" stats --help >/dev/null 2>&1; then
	nfs stats
fi
printf '\nthe daemon'"'"'s log (stderr, as with `nfsentry run --foreground`):\n'
sed 's/^/  /' "$TMP/daemon.log"

if [ "$SHELL_AFTER" = 1 ]; then
	say "a shell in $VICTIM, in $TMP: 'nfsentry' is this daemon, 'scan' scans again; exit to clean up"
	RC=$TMP/shellrc
	cat >"$RC" <<EOF
nfsentry() {
	case "\${1:-}" in
	config | import-portsentry | version | --version | -h | --help | "") command "$NFSENTRY" "\$@" ;;
	*) command "$NFSENTRY" "\$@" --config "$CONFIG" ;;
	esac
}
scan() { ip netns exec "$SCANNER" nmap ${NMAP_ARGS[*]} "\$@" $VICTIM_IP; }
PS1='try-it victim# '
cd "$TMP"
EOF
	if [ -t 0 ]; then
		in_victim bash --rcfile "$RC" -i || true
	else
		# commands from a pipe: each shown after the prompt, then run, as if typed
		# shellcheck disable=SC2016
		in_victim bash -c 'source "$1"; while IFS= read -r line; do printf "%s%s\n" "$PS1" "$line"; eval "$line"; done' _ "$RC" || true
	fi
fi
