# The environment the project's Pulumi runs in, for scripts/pulumi and scripts/fleet (sourced,
# after `set -euo pipefail`, with ROOT set to the checkout and WHO to the script's name): the
# pinned CLI on PATH, no update checks or plugin downloads, the file backend of Pulumi.yaml
# unless PULUMI_BACKEND_URL names another, and the passphrase of the stacks' secrets.
CACHE=${NEXUS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus-nested-vm}
[ -f "$CACHE/toolchain-bin" ] || { echo "$WHO: run scripts/setup first" >&2; exit 1; }
PATH="$(cat "$CACHE/toolchain-bin"):$PATH"
export PATH
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
# The file backend named in Pulumi.yaml, which must exist before Pulumi opens it. Named here
# too because Pulumi reads `~` from the account database, not $HOME.
STATE=$HOME/.nexus-nested-vm/pulumi-state
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
  mkdir -p "$STATE"
  export PULUMI_BACKEND_URL="file://$STATE"
  OWN_BACKEND=1
fi

# Local stacks encrypt their secrets (the VM's SSH key among them) with a passphrase: yours
# if you export PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE, else a random one
# made on first use and kept, readable by you alone, in PASSPHRASE_FILE (back it up: a stack
# cannot be read without it). Stacks made before that file existed used an empty passphrase
# and keep it until you change it (see the README).
PASSPHRASE_FILE=$HOME/.nexus-nested-vm/passphrase
has_stacks_without_passphrase_file() {
  [ "${OWN_BACKEND:-}" = 1 ] && [ -n "$(ls -A "$STATE/.pulumi/stacks" 2>/dev/null)" ]
}
if [ -n "${PULUMI_CONFIG_PASSPHRASE+set}" ] || [ -n "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  :
elif [ -f "$PASSPHRASE_FILE" ]; then
  export PULUMI_CONFIG_PASSPHRASE_FILE=$PASSPHRASE_FILE
elif has_stacks_without_passphrase_file; then
  export PULUMI_CONFIG_PASSPHRASE=
  echo "$WHO: your stacks' secrets use an empty passphrase; see the README's 'Passphrase' to set one" >&2
else
  mkdir -p "$(dirname "$PASSPHRASE_FILE")"
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSPHRASE_FILE.tmp.$$" \
    && mv "$PASSPHRASE_FILE.tmp.$$" "$PASSPHRASE_FILE")
  echo "$WHO: made a passphrase for your stacks' secrets in $PASSPHRASE_FILE (keep a copy)" >&2
  export PULUMI_CONFIG_PASSPHRASE_FILE=$PASSPHRASE_FILE
fi
