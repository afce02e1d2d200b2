#!/usr/bin/env bash
# Serves OpenStack's dashboard (Horizon) in front of a running Loom, for trying it in a
# browser and for tests/e2e/test_horizon.py.
#
#   scripts/horizon/run.sh IDENTITY_URL [LISTEN]
#
# IDENTITY_URL is Loom's identity endpoint (http://127.0.0.1:8774/identity/v3 for
# `loom up`); LISTEN defaults to 127.0.0.1:8080. Horizon comes from install.sh (its own
# virtualenv, HORIZON_VENV). Its static files are collected and compressed once per
# settings change. The server runs in the foreground.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 IDENTITY_URL [LISTEN]" >&2; exit 2; }
IDENTITY_URL=$1
LISTEN=${2:-127.0.0.1:8080}
VENV=${HORIZON_VENV:-/var/tmp/loom-horizon-venv}
"$(dirname "$0")/install.sh"

SITE=$("$VENV/bin/python" -c "import openstack_dashboard, os; print(os.path.dirname(os.path.dirname(openstack_dashboard.__file__)))")
SETTINGS=$SITE/openstack_dashboard/local/local_settings.py
NEW=$(mktemp)
cat >"$NEW" <<'PY'
# Written by Loom's scripts/horizon/run.sh; the identity URL comes from its argument.
import os
DEBUG = False
ALLOWED_HOSTS = ["*"]
SECRET_KEY = "loom-local-dashboard"
OPENSTACK_KEYSTONE_URL = os.environ["LOOM_HORIZON_IDENTITY_URL"]
OPENSTACK_KEYSTONE_DEFAULT_DOMAIN = "Default"
OPENSTACK_API_VERSIONS = {"identity": 3}
# Sessions live in signed cookies and the cache in memory: no database to set up.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
COMPRESS_OFFLINE = True
PY
export LOOM_HORIZON_IDENTITY_URL=$IDENTITY_URL
if ! cmp -s "$NEW" "$SETTINGS" || [[ ! -f $SITE/.loom-compressed ]]; then
  mv "$NEW" "$SETTINGS"
  rm -f "$SITE/.loom-compressed"
  "$VENV/bin/python" -m django collectstatic --noinput -v 0 --settings=openstack_dashboard.settings
  "$VENV/bin/python" -m django compress --force -v 0 --settings=openstack_dashboard.settings
  touch "$SITE/.loom-compressed"
else
  rm -f "$NEW"
fi
cd "$SITE"
# --insecure: the development server serves the collected static files itself.
exec "$VENV/bin/python" -m django runserver "$LISTEN" --insecure --noreload \
  --settings=openstack_dashboard.settings
