#!/usr/bin/env bash
# Make WordNet 3.0 available to nltk offline, in an NLTK data dir inside the project.
#
# Writes data/nltk_data/corpora/wordnet/ (git-ignored) and prints, alone on stdout, the value
# for NLTK_DATA: `export NLTK_DATA=$(scripts/setup_wordnet.sh)`.
# Idempotent: a second run changes nothing.
#
# Source, first that works:
#   1. Debian's wordnet-base + wordnet-sense-index packages: used when installed, and installed
#      with apt-get when missing and this script runs as root (a machine may reach a Debian
#      mirror but no other network). nltk also needs a `lexnames` file, which Debian does not
#      ship: it is written below (the table of the lexnames(5WN) man page: file number,
#      lexicographer file, syntactic category 1-4).
#   2. nltk's own downloader, which needs the network. Offline with neither, the script says what
#      is missing and how to provide it, and fails.
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

have_wordnet() {
    [ -s "$WN_DIR/lexnames" ] && [ -s "$WN_DIR/index.sense" ] && [ -s "$WN_DIR/data.noun" ]
}

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

install_debian_packages() {
    [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null || return 1
    local pkgs="wordnet-base wordnet-sense-index"
    echo "Installing Debian packages: $pkgs" >&2
    { apt-get install -y --no-install-recommends $pkgs || { apt-get update \
        && apt-get install -y --no-install-recommends $pkgs; }; } > /dev/null \
        || { echo "apt-get could not install $pkgs" >&2; return 1; }
    have_debian_files || { echo "$DEBIAN_DIR lacks WordNet files after the install" >&2; return 1; }
}

nltk_download() {
    local py="${PYTHON:-.venv/bin/python}"
    echo "Downloading WordNet with nltk's downloader (needs the network)" >&2
    # -e: stop at an error instead of asking whether to retry; the files are checked below.
    "$py" -m nltk.downloader -e -d "$NLTK_DIR" wordnet < /dev/null >&2 || true
    if [ ! -d "$WN_DIR" ] && [ -f "$NLTK_DIR/corpora/wordnet.zip" ]; then
        "$py" -m zipfile -e "$NLTK_DIR/corpora/wordnet.zip" "$NLTK_DIR/corpora/"
    fi
    have_wordnet
}

if have_wordnet; then
    echo "WordNet already set up in $WN_DIR" >&2
elif have_debian_files || install_debian_packages; then
    mkdir -p "$WN_DIR"
    for f in $FILES; do cp "$DEBIAN_DIR/$f" "$WN_DIR/$f.tmp" && mv "$WN_DIR/$f.tmp" "$WN_DIR/$f"; done
    write_lexnames "$WN_DIR/lexnames"
    echo "WordNet copied from $DEBIAN_DIR to $WN_DIR" >&2
elif ! nltk_download; then
    echo "error: WordNet (for EDA, augment_eda) is missing: $WN_DIR lacks lexnames, index.sense" \
         "or data.noun, and nltk could not download it (offline?). Either run this script" \
         "again where the network is up; or install Debian's wordnet-base and" \
         "wordnet-sense-index (sudo apt-get install wordnet-base wordnet-sense-index) and run it" \
         "again; or copy the corpora/wordnet directory of an NLTK data dir to $WN_DIR" >&2
    exit 1
fi

[ "$(wc -l < "$WN_DIR/lexnames")" -eq 45 ] || { echo "error: $WN_DIR/lexnames is not 45 lines" >&2; exit 1; }
echo "$(pwd)/$NLTK_DIR"
