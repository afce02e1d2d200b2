#!/usr/bin/env bash
# Runs Tempest's tempest.api.compute against a running `loom up`.
# Usage: scripts/tempest/run.sh DATA_DIR [URL] [REGEX]
#   TEMPEST_NEUTRON=true turns the network service on (for '^tempest\.api\.network').
#   DATA_DIR  the `loom up` data directory (its clouds.yaml has the admin's password)
#   URL       the gateway (default http://127.0.0.1:8774)
#   REGEX     tests to run (default ^tempest\.api\.compute)
# Tempest goes into its own venv (TEMPEST_VENV, default /tmp/tempest-venv), never the
# project's lock; its workspace is TEMPEST_WORKSPACE (default /tmp/tempest-loom).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
data=$(cd "$1" && pwd)
url=${2:-http://127.0.0.1:8774}
regex=${3:-'^tempest\.api\.compute'}
venv=${TEMPEST_VENV:-/tmp/tempest-venv}
ws=${TEMPEST_WORKSPACE:-/tmp/tempest-loom}
version=${TEMPEST_VERSION:-47.0.0}

if [ ! -x "$venv/bin/tempest" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "tempest==$version"
fi

export OS_CLIENT_CONFIG_FILE="$data/clouds.yaml"
osc() { "$repo/.venv/bin/openstack" --os-cloud loom-admin "$@"; }

# Pre-provisioned accounts: six projects, each with a member, a reader and a manager account (Tempest
# asks for its project_reader persona in the primary's project), and two admins alone in
# their projects; Tempest needs about twice its concurrency in accounts. Tempest may hand
# any non-admin account out as "primary", which creates servers, so the reader accounts hold
# Loom's member role too: these runs check the API's shapes, not its role checks.
password=tempest-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
if [ ! -f "$ws/.stestr.conf" ]; then
  rm -rf "$ws"
  # Tempest keeps a registry of workspaces by name: forget a removed one's entry first.
  "$venv/bin/tempest" workspace remove --name "$(basename "$ws")" >/dev/null 2>&1 || true
  "$venv/bin/tempest" init "$ws" >/dev/null
fi
mkdir -p "$ws/etc" "$ws/logs"
account() {  # project user persona loom-roles...
  local project=$1 user=$2 persona=$3
  shift 3
  osc project show "$project" >/dev/null 2>&1 || osc project create "$project" >/dev/null
  if osc user show "$user" >/dev/null 2>&1; then
    osc user set --password "$password" "$user"
  else
    osc user create --project "$project" --password "$password" "$user" >/dev/null
  fi
  for role in "$@"; do osc role add --project "$project" --user "$user" "$role"; done
  {
    echo "- username: '$user'"
    echo "  project_name: '$project'"
    echo "  password: '$password'"
    echo "  domain_name: 'Default'"
    if [ "$persona" = admin ]; then echo "  types: ['admin']"; fi
    echo "  roles: ['$persona']"
  } >> "$ws/etc/accounts.yaml"
}
# Made once per workspace (each account takes a few CLI calls); delete accounts.yaml to
# make them again.
if [ ! -s "$ws/etc/accounts.yaml" ]; then
  for i in 1 2 3 4 5 6; do
    account "tempest-p$i" "tempest-m$i" member member
    account "tempest-p$i" "tempest-r$i" reader member reader
    # Loom has no manager role: a member stands in for Tempest's project_manager persona,
    # which classes such as MigrationsAdminTest ask for beside their primary.
    account "tempest-p$i" "tempest-g$i" manager member
  done
  account tempest-a1 tempest-a1 admin admin
  account tempest-a2 tempest-a2 admin admin
fi

# A shared network every project sees, as a deployment's provider network: the compute
# API's os-networks proxy (Tempest's ComputeNetworksTest) lists it, and servers created
# with `auto` networks (or none named, before 2.37) get their port on it, so it has a subnet.
osc network show tempest-shared >/dev/null 2>&1 || osc network create --share tempest-shared >/dev/null
osc subnet show tempest-shared-v4 >/dev/null 2>&1 ||
  osc subnet create --network tempest-shared --subnet-range 10.250.0.0/16 tempest-shared-v4 >/dev/null

# The external network floating IPs come from (tempest.api.network, TEMPEST_NEUTRON=true).
neutron=${TEMPEST_NEUTRON:-false}
public_id=
if [ "$neutron" = true ]; then
  osc network show tempest-public >/dev/null 2>&1 || osc network create --external tempest-public >/dev/null
  osc subnet show tempest-public-v4 >/dev/null 2>&1 ||
    osc subnet create --network tempest-public --subnet-range 203.0.113.0/24 --no-dhcp tempest-public-v4 >/dev/null
  public_id=$(osc network show tempest-public -f value -c id)
  # As in a cloud with floating IPs: a router joins the shared network to the public one,
  # so a server on the shared network can be given a floating IP.
  if ! osc router show tempest-router >/dev/null 2>&1; then
    osc router create --external-gateway tempest-public tempest-router >/dev/null
    osc router add subnet tempest-router tempest-shared-v4 >/dev/null
  fi
fi

image=$(osc image show loom-tiny -f value -c id)
# A second image with loom-tiny's bytes (image_ref_alt): rebuild and image tests want two.
if ! osc image show tempest-alt >/dev/null 2>&1; then
  bytes=$(mktemp)
  osc image save --file "$bytes" loom-tiny
  format=$(osc image show loom-tiny -f value -c disk_format)
  osc image create --public --disk-format "$format" --container-format bare --file "$bytes" tempest-alt >/dev/null
  rm -f "$bytes"
fi
image_alt=$(osc image show tempest-alt -f value -c id)
flavor=$(osc flavor show m1.tiny -f value -c id)
flavor_alt=$(osc flavor show m1.small -f value -c id)
admin_password=$("$repo/.venv/bin/python" -c '
import sys, yaml
clouds = yaml.safe_load(open(sys.argv[1]))["clouds"]
print(clouds["loom-admin"]["auth"]["password"])' "$data/clouds.yaml")
sed -e "s#@WORKSPACE@#$ws#g" -e "s#@ADMIN_PASSWORD@#$admin_password#g" -e "s#@URL@#$url#g" -e "s#@IMAGE@#$image#g" \
    -e "s#@IMAGE_ALT@#$image_alt#g" \
    -e "s#@FLAVOR@#$flavor#g" -e "s#@FLAVOR_ALT@#$flavor_alt#g" \
    -e "s#@NEUTRON@#$neutron#g" -e "s#@PUBLIC_NETWORK_ID@#$public_id#g" \
    "$here/tempest.conf.in" > "$ws/etc/tempest.conf"

cd "$ws"
"$venv/bin/tempest" run --config-file "$ws/etc/tempest.conf" --regex "$regex" \
  --exclude-list "$here/not-served.txt" --concurrency "${TEMPEST_CONCURRENCY:-2}" || true
"$venv/bin/stestr" last --subunit | "$venv/bin/subunit2csv" > "$ws/results.csv" || true
echo "results: $ws/results.csv"
