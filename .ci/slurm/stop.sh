#!/usr/bin/env bash
# .ci/slurm/stop.sh -- cancel what is left and stop the daemons .ci/slurm/start.sh started
# (by the pids in their pid files, never by name). Safe to run when nothing is running.
set -uo pipefail
PREFIX=${LLCUDA_SLURM_PREFIX:-${TMPDIR:-/tmp}/llcuda-ci-slurm}
export SLURM_CONF=$PREFIX/etc/slurm.conf
say() { echo "[slurm-stop $(date +%T)] $*" >&2; }
alive() { local pid; pid=$(cat "$1" 2>/dev/null) || return 1
          [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; }

if alive "$PREFIX/run/slurmctld.pid" slurmctld; then
  left=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${left// }" ]; then
    say "cancelling jobs left over: $left"
    scancel $left 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for name in slurmd slurmctld; do
  pidfile=$PREFIX/run/$name.pid
  alive "$pidfile" "$name" || continue
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ]; then say "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; fi
  say "stopped $name ($pid)"
done
exit 0
