#!/usr/bin/env bash
# m3d-entrypoint: gate the pod with `m3d-doctor gate`, then `exec` the command (so signals reach it directly).
#
#   M3D_GATE_POLICY=fail  (default) print the gate's findings and exit with its code when it blocks
#                   fix   apply the doctor's *safe* fixes (`m3d-doctor fix --yes --safe-only`), gate again,
#                         exit with the second gate's code if it still blocks
#                   warn  print the decision and start anyway
#   M3D_GATE_ARGS   extra gate arguments, split on whitespace, e.g. "--min-free-vram 20GiB --offline"
#                   (target options among them, such as --python/--profile/--offline, also go to `fix`)
#   M3D_SKIP_GATE=1 skip the gate entirely (logged)
#   M3D_DOCTOR_PROFILE_FILE  where env.persist keeps exports (on the volume); sourced before the gate
#   M3D_OUTPUTS     created if missing (default /workspace/outputs, when /workspace exists)
#
# Never `set -x` here: the environment holds the HF token.
set -u

log() { printf 'm3d-entrypoint: %s\n' "$*" >&2; }

if [ "$#" -eq 0 ]; then
    set -- bash
fi

load_persisted_env() {
    local f="${M3D_DOCTOR_PROFILE_FILE:-}"
    if [ -n "$f" ] && [ -r "$f" ]; then
        # shellcheck source=/dev/null
        . "$f"
    fi
}

outputs="${M3D_OUTPUTS:-/workspace/outputs}"
if [ -n "${M3D_OUTPUTS:-}" ] || [ -d /workspace ]; then
    mkdir -p "$outputs" 2>/dev/null || log "cannot create $outputs"
fi

load_persisted_env
if [ "${M3D_SKIP_GATE:-0}" = "1" ]; then
    log "M3D_SKIP_GATE=1: gate skipped, starting: $1"
    exec "$@"
fi

policy="${M3D_GATE_POLICY:-fail}"
case "$policy" in
    fail | fix | warn) ;;
    *)
        log "M3D_GATE_POLICY=$policy: expected fail, fix or warn"
        exit 2
        ;;
esac

read -r -a gate_args <<<"${M3D_GATE_ARGS:-}"

# `fix` takes the target options only: drop the gate's own flags (and their values).
fix_args=()
skip_next=0
for a in "${gate_args[@]+"${gate_args[@]}"}"; do
    if [ "$skip_next" = 1 ]; then
        skip_next=0
        continue
    fi
    case "$a" in
        --skip | --min-free-vram | --min-free-disk) skip_next=1 ;;
        --skip=* | --min-free-vram=* | --min-free-disk=* | --strict | --json | -v | --verbose) ;;
        *) fix_args+=("$a") ;;
    esac
done

gate() {
    m3d-doctor gate -v "${gate_args[@]+"${gate_args[@]}"}"
}

gate
rc=$?
if [ "$rc" -ne 0 ]; then
    case "$policy" in
        fail)
            log "gate blocked the start (exit $rc); M3D_GATE_POLICY=fix applies safe fixes, =warn starts anyway"
            exit "$rc"
            ;;
        warn)
            log "gate exit $rc; starting anyway (M3D_GATE_POLICY=warn)"
            ;;
        fix)
            if [ -n "${M3D_DOCTOR_PROFILE_FILE:-}" ]; then
                mkdir -p "$(dirname "$M3D_DOCTOR_PROFILE_FILE")" 2>/dev/null || true
            fi
            log "gate exit $rc; applying safe fixes (m3d-doctor fix --yes --safe-only)"
            m3d-doctor fix --yes --safe-only "${fix_args[@]+"${fix_args[@]}"}"
            log "fix exit $?; gating again"
            load_persisted_env
            gate
            rc=$?
            if [ "$rc" -ne 0 ]; then
                log "gate still blocks after the safe fixes (exit $rc); see: m3d-doctor fix --dry-run"
                exit "$rc"
            fi
            ;;
    esac
fi

exec "$@"
