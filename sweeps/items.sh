# Sourced by sweeps/frontier.sh and sweeps/lr_sweep.sh: how their list variables name an
# architecture's own values, and which override an architecture's sparsity setting is.

arch_coeffs_of() {  # "list" arch fallback... -> that architecture's own "arch=v,v" values, else the fallback
    local item
    for item in $1; do
        [[ "${item%%=*}" == "$2" ]] && { echo "${item#*=}" | tr , ' '; return; }
    done
    echo "${@:3}"
}
setting_key() {  # arch -> the override its sweep value sets
    case "$1" in topk | batchtopk) echo sae.k ;; *) echo sae.l1_coefficient ;; esac
}
