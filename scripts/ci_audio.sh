#!/usr/bin/env bash
# Install and start a user-space audio stack for the audio tests (CI and headless machines).
#
# Idempotent: packages are installed only when missing (apt-get update runs only then), the
# PulseAudio daemon is started only when no server answers, and each null sink is loaded only
# when absent. Safe to call before every `make test`.
#
#   avatarcam_mic  the tests' "microphone": a tone is played into it, recorded from avatarcam_mic.monitor
#   avatarcam_out  where avatarcam writes the delayed audio; recorded from avatarcam_out.monitor
#
# Exits 0 with a warning (never fails the build) when no server can be started: the audio
# tests then skip and say why.
set -u

log() { echo "ci_audio: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

need=()
command -v pulseaudio >/dev/null 2>&1 || need+=(pulseaudio)
command -v pactl >/dev/null 2>&1 || need+=(pulseaudio-utils)
# libportaudio2 provides libportaudio.so.2, which sounddevice loads at import.
if ! ldconfig -p 2>/dev/null | grep -q 'libportaudio\.so\.2'; then need+=(libportaudio2); fi
# The ALSA "pulse" plugin: PortAudio reaches PulseAudio through it (a dependency of pulseaudio on
# Debian, checked anyway).
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s libasound2-plugins >/dev/null 2>&1; then need+=(libasound2-plugins); fi

if [ "${#need[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq >/dev/null \
            && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
            || log "apt-get install failed; the audio tests will skip"
    else
        log "missing ${need[*]} and no apt-get here; install them with your package manager"
    fi
fi

if ! command -v pulseaudio >/dev/null 2>&1 || ! command -v pactl >/dev/null 2>&1; then
    log "pulseaudio/pactl not available; the audio tests will skip"
    exit 0
fi

# A per-user daemon needs a runtime directory; root on a headless box has no login session
# that would create /run/user/0, so make one. The tests find the same directory through
# XDG_RUNTIME_DIR (or the default /run/user/<uid> used here).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="/run/user/$(id -u)"
fi
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

if ! pactl info >/dev/null 2>&1; then
    log "starting PulseAudio (user mode, no idle exit)"
    # --exit-idle-time=-1 keeps it alive between test runs; root needs no special flags in user
    # mode as long as the runtime directory exists (PulseAudio only warns about running as root).
    # No sound card: module-udev-detect finds nothing, which is fine: we only use null sinks.
    pulseaudio --daemonize=yes --system=false --exit-idle-time=-1 --disallow-exit \
        --log-target=stderr >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do
        pactl info >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
if ! pactl info >/dev/null 2>&1; then
    log "PulseAudio did not start; the audio tests will skip"
    exit 0
fi

for sink in avatarcam_mic avatarcam_out; do
    if ! pactl list short sinks | awk '{print $2}' | grep -qx "$sink"; then
        # 48 kHz like avatarcam's default stream, so PulseAudio does not resample.
        pactl load-module module-null-sink sink_name="$sink" rate=48000 \
            sink_properties=device.description="$sink" >/dev/null \
            || log "could not load null sink $sink"
    fi
done
log "PulseAudio ready: $(pactl list short sinks | awk '{print $2}' | tr '\n' ' ')"
exit 0
