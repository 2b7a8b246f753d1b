#!/usr/bin/env bash
# .ci/slurm/start.sh -- a one-node Slurm (slurmctld + slurmd) for CI, in the background.
#
#   bash .ci/slurm/start.sh            # prints `export SLURM_CONF=...` on success
#
# Installs Debian's slurmctld/slurmd/slurm-client when missing (needs root and apt), writes
# slurm.conf from slurm.conf.template beside this script, starts both daemons detached and waits
# until the node is idle. Exit status: 0 = ready; 2 = Slurm cannot run here (not root, no apt,
# install failed; the reason is on stderr); 1 = it was installed but did not come up.
# Stop it with .ci/slurm/stop.sh (same environment).
#
# Environment:
#   LLCUDA_SLURM_PREFIX   state, logs, config (default ${TMPDIR:-/tmp}/llcuda-ci-slurm)
#   LLCUDA_SLURM_CPUS     CPUs the node advertises (default 6: a 3-rank job beside a 2-rank one
#                         on a 2-core box; they mostly wait)
#   LLCUDA_SLURM_GPUS     fake GPUs as gres (default 4; 0 = none): Slurm sets CUDA_VISIBLE_DEVICES
#                         per task for --gpus-per-task, so device binding is tested without GPUs
#   LLCUDA_SLURM_MPI_DEFAULT  MpiDefault (default none, Slurm's own default)
#   LLCUDA_SLURM_KILLWAIT     seconds from SIGTERM to SIGKILL (default 10)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${LLCUDA_SLURM_PREFIX:-${TMPDIR:-/tmp}/llcuda-ci-slurm}
CPUS=${LLCUDA_SLURM_CPUS:-6}
GPUS=${LLCUDA_SLURM_GPUS:-4}
CONF=$PREFIX/etc/slurm.conf
say() { echo "[slurm-start $(date +%T)] $*" >&2; }
unavailable() { say "Slurm unavailable: $*"; exit 2; }

# ------------------------------------------------------------------ packages
installed() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
    compgen -G '/usr/lib/*/slurm-wlm/auth_none.so' >/dev/null
}
if ! installed; then
  [ "$(id -u)" = 0 ] || unavailable "not root, cannot install slurmctld/slurmd/slurm-client"
  command -v apt-get >/dev/null || unavailable "no apt-get on this machine"
  say "installing slurmctld slurmd slurm-client (apt-get, --no-install-recommends)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || unavailable "apt-get update failed (no network?)"
  # auth_none/cred_none/mpi_pmi2 plugins come with slurm-wlm-basic-plugins (a dependency).
  # The postinst scripts cannot start services without systemd; that is expected.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client >/dev/null ||
    unavailable "apt-get install slurmctld slurmd slurm-client failed"
  installed || unavailable "packages installed but slurmctld/slurmd/sbatch/auth_none.so missing"
fi
[ "$(id -u)" = 0 ] || unavailable "not root: slurmd must run as root to start jobs as their user"

# ------------------------------------------------------------------ config
alive() {  # alive PIDFILE NAME: the pid in the file is running that daemon
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
if alive "$PREFIX/run/slurmctld.pid" slurmctld || alive "$PREFIX/run/slurmd.pid" slurmd; then
  say "daemons of $PREFIX already running; stop them first (.ci/slurm/stop.sh)"; exit 1
fi
free_port() {  # free_port PREFERRED: PREFERRED if nobody listens there, else one the kernel picks
  python3 - "$1" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1]); break
PY
}
CTLD_PORT=$(free_port 6817)
SLURMD_PORT=$(free_port 6818)
[ "$SLURMD_PORT" != "$CTLD_PORT" ] || SLURMD_PORT=$(free_port 0)
NODE=$(hostname -s)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
MEM=$(( ${MEM:-2048} * 9 / 10 ))
rm -rf "$PREFIX"/{state,spool,log,run,dev}
mkdir -p "$PREFIX"/{etc,state,spool,log,run}
GRES_TYPES="" GRES=""
: > "$PREFIX/etc/gres.conf"
if [ "$GPUS" -gt 0 ]; then
  # Stand-ins for /dev/nvidia*: with task/none nothing opens them; Slurm only needs File= to hand
  # out per-task CUDA_VISIBLE_DEVICES. slurmd insists on character devices: copies of /dev/null.
  mkdir -p "$PREFIX/dev"
  if (for i in $(seq 0 $((GPUS - 1))); do mknod "$PREFIX/dev/fakegpu$i" c 1 3 || exit 1; done) 2>/dev/null; then
    echo "NodeName=$NODE Name=gpu File=$PREFIX/dev/fakegpu[0-$((GPUS - 1))]" > "$PREFIX/etc/gres.conf"
    GRES_TYPES="GresTypes=gpu" GRES="Gres=gpu:$GPUS"
  else
    say "warning: mknod not permitted here: no fake GPUs (the --gpus-per-task tests will skip)"; GPUS=0
  fi
fi
OVERRIDES=""
DET_CPUS=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -1)
# More CPUs than the host has: let slurmd take the configured count instead of draining the node.
[ "$CPUS" = "$DET_CPUS" ] || OVERRIDES="SlurmdParameters=config_overrides"
sed -e "s#@NODE@#$NODE#g" -e "s#@PREFIX@#$PREFIX#g" -e "s#@CPUS@#$CPUS#" -e "s#@MEM@#$MEM#" \
    -e "s#@CTLD_PORT@#$CTLD_PORT#" -e "s#@SLURMD_PORT@#$SLURMD_PORT#" \
    -e "s#@MPI_DEFAULT@#${LLCUDA_SLURM_MPI_DEFAULT:-none}#" -e "s#@KILLWAIT@#${LLCUDA_SLURM_KILLWAIT:-10}#" \
    -e "s#@FIRST_JOB_ID@#${LLCUDA_SLURM_FIRST_JOB_ID:-$(( RANDOM * 1000 + RANDOM % 1000 + 100000 ))}#" \
    -e "s#@GRES_TYPES@#$GRES_TYPES#" -e "s#@GRES@#$GRES#" -e "s#@OVERRIDES@#$OVERRIDES#" \
    "$HERE/slurm.conf.template" > "$CONF"
export SLURM_CONF=$CONF

# ------------------------------------------------------------------ daemons
getent hosts "$(hostname)" >/dev/null ||
  say "warning: $(hostname) does not resolve: mpiexec (Hydra) inside jobs will fail; add it to /etc/hosts"
start() {  # start NAME: detached (setsid), foreground mode (-D), its pid file written by itself
  setsid nohup "$1" -D -f "$CONF" >>"$PREFIX/log/$1.out" 2>&1 </dev/null &
  for _ in $(seq 50); do alive "$PREFIX/run/$1.pid" "$1" && return 0; sleep 0.1; done
  say "$1 did not start:"; tail -n 20 "$PREFIX/log/$1.out" "$PREFIX/log/$1.log" >&2 2>/dev/null || true
  exit 1
}
start slurmctld
start slurmd

state=""
for _ in $(seq 120); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  case $state in
    idle|mixed|allocated) break ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case $state in
  idle|mixed|allocated) ;;
  *) say "node $NODE is '${state:-unknown}' after 60 s:"; sinfo -R >&2 || true
     tail -n 20 "$PREFIX/log/slurmd.log" >&2 2>/dev/null || true; exit 1 ;;
esac
say "$(slurmd -V): node $NODE $state, $CPUS CPUs, $GPUS fake GPUs, ports $CTLD_PORT/$SLURMD_PORT, $PREFIX"
echo "export SLURM_CONF=$CONF"
