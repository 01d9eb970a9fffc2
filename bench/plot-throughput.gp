# Throughput versus connections/threads for one key type.
# gnuplot -e "datafile='...'; keyname='rsa2048'; label='SoftHSM'; outfile='docs/perf-throughput-rsa2048.png'" plot-throughput.gp
# datafile columns: conc p11rate groupsrv p11kit   (ops/s; "-" = not measured)
set terminal pngcairo size 800,520 font ",10" noenhanced
set output outfile
set datafile missing "-"
if (!exists("label")) label = "SoftHSM"
set title sprintf("Unwrap throughput, %s group key (%s)", keyname, label)
set xlabel "concurrent connections (groupsrv) / threads (p11rate, p11-kit server)"
set ylabel "unwraps per second"
set logscale x 2
set xtics (1, 2, 4, 8, 16, 32, 64)
set xrange [0.8:80]
set yrange [0:*]
set grid
set key outside bottom center horizontal
plot datafile using 1:2 with linespoints lw 2 pt 7 title "p11rate: in-process C_Decrypt (the limit)", \
     datafile using 1:3 with linespoints lw 2 pt 5 title "groupsrv over HTTPS, keep-alive", \
     datafile using 1:4 with linespoints lw 2 pt 9 title "p11rate via p11-kit server"
