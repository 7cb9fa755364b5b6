import csv, glob, sys, os
# per run: above-TCP excess over N x image, split (MB, whole locality)
for pat in sys.argv[1:]:
  for d in sorted(glob.glob(pat)):
    c = glob.glob(d + '/n*/nodes-edgeswarm-*.csv')
    if not c: continue
    rows = list(csv.DictReader(open(c[0])))
    g = lambda r,k: float(r.get(k) or 0)
    img = g(rows[0],'bytes_from_cloud')
    n = len(rows)
    stream = sum(g(r,'stream_bytes_received') for r in rows)
    peers = sum(g(r,'bytes_from_peers') for r in rows)
    goss = sum(g(r,'gossip_bytes_received') for r in rows)
    dl = sum(g(r,'bytes_downloaded') for r in rows)
    abort = sum(g(r,'relay_bytes_aborted') for r in rows)
    dups = sum(g(r,'duplicate_chunks') for r in rows)
    excess = stream + goss + img - n*img
    retr = sum(g(r,'tcp_segments_retransmitted') for r in rows)
    print(f"{os.path.basename(d):38s} excess={excess/1e6:6.2f}MB ({excess/(n*img)*100:.2f}%) gossip={goss/1e6:.2f} stream-over-peers={(stream-peers)/1e6:.2f} dl-over-peers={(dl-peers)/1e6:.2f} aborted={abort/1e6:.2f} dups={dups:.0f} retr={retr:.0f}")
