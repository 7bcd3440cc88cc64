#!/bin/sh
# certbot deploy hook: copy the renewed certificate for syncrelay's
# smtp.hostname where syncrelay (user syncrelay, ProtectSystem=strict) can
# read it, then reload it without dropping connections (SIGHUP).
#
#   install -m 0755 dist/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/syncrelay
#
# certbot runs every deploy hook for every certificate it renews on the
# host, with RENEWED_LINEAGE (e.g. /etc/letsencrypt/live/relay.example.com)
# and RENEWED_DOMAINS (the names the certificate covers, space separated).
# This hook acts only when the renewed certificate covers smtp.hostname
# (read from syncrelay's config), so another site's renewal never replaces
# syncrelay's certificate. Run by hand (no RENEWED_DOMAINS), the lineage
# directory must be named after smtp.hostname:
#
#   RENEWED_LINEAGE=/etc/letsencrypt/live/relay.example.com /etc/letsencrypt/renewal-hooks/deploy/syncrelay
#
# SYNCRELAY_CONFIG, SYNCRELAY_TLS_DIR and SYNCRELAY_GROUP override the
# config path, the destination directory and the group that may read it.
set -eu
config=${SYNCRELAY_CONFIG:-/etc/syncrelay/syncrelay.toml}
dst=${SYNCRELAY_TLS_DIR:-/etc/syncrelay/tls}
group=${SYNCRELAY_GROUP:-syncrelay}
lineage=${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE to the renewed certificate directory}

# smtp.hostname: the hostname key of the [smtp] table (a basic or literal
# TOML string), lower-cased.
host=$(awk '
	/^[[:space:]]*\[/ { section = $0; gsub(/[[:space:]]/, "", section); next }
	section == "[smtp]" && /^[[:space:]]*hostname[[:space:]]*=/ {
		v = $0
		sub(/^[^=]*=[[:space:]]*/, "", v)
		sub(/[[:space:]]*#.*$/, "", v)
		gsub(/^["'\'']|["'\'']$/, "", v)
		print tolower(v)
		exit
	}' "$config")
if [ -z "$host" ]; then
	echo "syncrelay deploy hook: no smtp.hostname in $config: cannot tell which certificate is syncrelay's; nothing changed" >&2
	exit 1
fi

# Does the renewed certificate cover $host? An exact name, or a wildcard
# one label up (*.example.com covers relay.example.com).
covers=no
if [ -n "${RENEWED_DOMAINS+set}" ]; then
	for d in $RENEWED_DOMAINS; do
		d=$(printf '%s' "$d" | tr '[:upper:]' '[:lower:]')
		case "$d" in
		"$host" | "*.${host#*.}") covers=yes ;;
		esac
	done
elif [ "$(basename "$lineage" | tr '[:upper:]' '[:lower:]')" = "$host" ]; then
	covers=yes
fi
if [ "$covers" != yes ]; then
	echo "syncrelay deploy hook: $lineage is not the certificate for $host (smtp.hostname); skipped"
	exit 0
fi

install -d -m 0750 -g "$group" "$dst"
install -m 0640 -g "$group" "$lineage/fullchain.pem" "$dst/fullchain.pem.new"
install -m 0640 -g "$group" "$lineage/privkey.pem" "$dst/privkey.pem.new"
mv "$dst/fullchain.pem.new" "$dst/fullchain.pem"
mv "$dst/privkey.pem.new" "$dst/privkey.pem"
systemctl reload syncrelay
echo "syncrelay deploy hook: installed $lineage for $host and reloaded syncrelay"
