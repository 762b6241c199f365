#!/usr/bin/env bash
# Make WordNet 3.0 available to nltk offline, in an NLTK data dir inside the project.
#
# Writes data/nltk_data/corpora/wordnet/ (git-ignored) and prints, alone on stdout, the value
# for NLTK_DATA: `export NLTK_DATA=$(scripts/setup_wordnet.sh)`.
# Idempotent: a second run changes nothing.
#
# Source, first that works:
#   1. Debian's wordnet-base + wordnet-sense-index packages (installed with apt-get when missing;
#      the machine kind of this project has the Debian mirror but no other network). nltk also
#      needs a `lexnames` file, which Debian does not ship: it is written below (the table of the
#      lexnames(5WN) man page: file number, lexicographer file, syntactic category 1-4).
#   2. nltk's own downloader, when there is no apt-get and the network is up.
#
# The files are copied, not symlinked: nltk 3.10 resolves symlinks and refuses corpus files
# that lie outside its data path.
set -euo pipefail

cd "$(dirname "$0")/.."
NLTK_DIR="data/nltk_data"
WN_DIR="$NLTK_DIR/corpora/wordnet"
DEBIAN_DIR="/usr/share/wordnet"
FILES="cntlist.rev index.sense index.adj index.adv index.noun index.verb
       data.adj data.adv data.noun data.verb adj.exc adv.exc noun.exc verb.exc"

have_debian_files() {
    for f in $FILES; do [ -s "$DEBIAN_DIR/$f" ] || return 1; done
}

write_lexnames() {
    local n=0 out="$1.tmp"
    : > "$out"
    for name in adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact \
        noun.attribute noun.body noun.cognition noun.communication noun.event noun.feeling \
        noun.food noun.group noun.location noun.motive noun.object noun.person \
        noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation \
        noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition \
        verb.communication verb.competition verb.consumption verb.contact verb.creation \
        verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative \
        verb.weather adj.ppl; do
        case "$name" in
            noun.*) cat=1 ;; verb.*) cat=2 ;; adj.*) cat=3 ;; adv.*) cat=4 ;;
        esac
        printf '%02d\t%s\t%d\n' "$n" "$name" "$cat" >> "$out"
        n=$((n + 1))
    done
    mv "$out" "$1"
}

if [ -s "$WN_DIR/lexnames" ] && [ -s "$WN_DIR/index.sense" ] && [ -s "$WN_DIR/data.noun" ]; then
    echo "WordNet already set up in $WN_DIR" >&2
elif command -v apt-get > /dev/null; then
    if ! have_debian_files; then
        pkgs="wordnet-base wordnet-sense-index"
        echo "Installing Debian packages: $pkgs" >&2
        apt-get install -y --no-install-recommends $pkgs > /dev/null \
            || { apt-get update > /dev/null && apt-get install -y --no-install-recommends $pkgs > /dev/null; }
    fi
    have_debian_files || { echo "error: $DEBIAN_DIR lacks WordNet files after install" >&2; exit 1; }
    mkdir -p "$WN_DIR"
    for f in $FILES; do cp "$DEBIAN_DIR/$f" "$WN_DIR/$f.tmp" && mv "$WN_DIR/$f.tmp" "$WN_DIR/$f"; done
    write_lexnames "$WN_DIR/lexnames"
    echo "WordNet copied from $DEBIAN_DIR to $WN_DIR" >&2
else
    PY="${PYTHON:-.venv/bin/python}"
    echo "No apt-get: trying nltk's downloader (needs the network)" >&2
    "$PY" -m nltk.downloader -d "$NLTK_DIR" wordnet >&2 || {
        echo "error: could not download WordNet; install Debian's wordnet-base and" \
             "wordnet-sense-index, or run this script where the network is up" >&2
        exit 1
    }
    if [ ! -d "$WN_DIR" ] && [ -f "$NLTK_DIR/corpora/wordnet.zip" ]; then
        "$PY" -m zipfile -e "$NLTK_DIR/corpora/wordnet.zip" "$NLTK_DIR/corpora/"
    fi
fi

[ "$(wc -l < "$WN_DIR/lexnames")" -eq 45 ] || { echo "error: $WN_DIR/lexnames is not 45 lines" >&2; exit 1; }
echo "$(pwd)/$NLTK_DIR"
