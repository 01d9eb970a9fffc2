# Latency distribution at 80% of peak throughput, one line per key type.
# gnuplot -e "outfile='docs/perf-latency.png'; files='a.dat b.dat'; names='rsa2048 rsa3072'" plot-latency.gp
# each file: percentile latency_ms (whitespace separated)
set terminal pngcairo size 800,500 font ",10" noenhanced
set output outfile
set title "groupsrv unwrap latency at 80% of peak, open loop, keep-alive (64 connections)"
set xlabel "percentile"
set ylabel "latency (ms)"
# x axis in "nines": 1/(1-p), so the tail gets room
set logscale x 10
set xrange [1:10000]
set xtics ("0%%" 1, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000)
set yrange [0:*]
set grid
set key top left
plot for [i=1:words(files)] word(files, i) using (1/(1-($1/100.0)+1e-9)):2 with lines lw 2 title word(names, i)
