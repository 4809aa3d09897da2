# bench/kl_bpw.gp: KL (log y) against honest bpw, one curve per configuration family,
# solid without rotation, dashed with --rotate hadamard (seed 0); the extra rotation
# seeds as open circles. Run through bench/kl_bpw_plot.sh, which writes the data file
# (two blocks per family: none, then hadamard; then one block of extra seeds) and sets
#   dat  the data file     png  the output     nfam  the number of families
set terminal pngcairo size 1400,900 font ",11"
set output png
set logscale y
set xlabel "bits per weight (honest: every stored byte of the 35 quantized linears)"
set ylabel "KL(fp || quantized), stories260K eval tokens (log scale)"
set title "stories260K: held-out KL against honest bpw (solid: --rotate none, dashed: --rotate hadamard seed 0)"
set grid xtics ytics mytics
set key outside right top vertical Left reverse noenhanced
set xrange [*:*]
array col[12] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", \
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8"]
plot for [i=0:2*nfam-1] dat index i using 1:2 title columnheader(1) \
         with linespoints lw 2 pt (7 + (i % 2)) ps 1.2 dt 1 + i % 2 \
         lc rgb col[(i / 2) % 12 + 1], \
     dat index 2*nfam using 1:2 title columnheader(1) with points pt 6 ps 1.6 lc rgb "#000000"
