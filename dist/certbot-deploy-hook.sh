#!/bin/sh
# certbot deploy hook: copy the renewed certificate where syncrelay (user
# syncrelay, ProtectSystem=strict) can read it, then reload it without
# dropping connections (SIGHUP).
#
#   install -m 0755 dist/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/syncrelay
#
# certbot sets RENEWED_LINEAGE (e.g. /etc/letsencrypt/live/relay.example.com).
set -eu
dst=/etc/syncrelay/tls
install -d -m 0750 -o root -g syncrelay "$dst"
install -m 0640 -o root -g syncrelay "$RENEWED_LINEAGE/fullchain.pem" "$dst/fullchain.pem.new"
install -m 0640 -o root -g syncrelay "$RENEWED_LINEAGE/privkey.pem" "$dst/privkey.pem.new"
mv "$dst/fullchain.pem.new" "$dst/fullchain.pem"
mv "$dst/privkey.pem.new" "$dst/privkey.pem"
systemctl reload syncrelay
