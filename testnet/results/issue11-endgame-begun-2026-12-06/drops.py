# drops.py DIR...: bytes the nodes sent that no node link took in (the
# gateway's cloud download aside, with its acknowledgements ~3 %), next to
# the resent segments' bytes and the bytes below the chunk streams per node.
import csv, glob, sys
for d in sys.argv[1:]:
    rows = list(csv.DictReader(open(glob.glob(d + '/n*/nodes-edgeswarm-*.csv')[0])))
    g = lambda r, k: float(r[k] or 0)
    out = sum(g(r, 'link_out_bytes') for r in rows)
    inn = sum(g(r, 'link_in_bytes') for r in rows)
    cloud = g(rows[0], 'bytes_from_cloud')
    retr = sum(g(r, 'tcp_segments_retransmitted') for r in rows)
    below = [(g(r, 'link_in_bytes') - g(r, 'stream_bytes_received') - g(r, 'gossip_bytes_received')) / 1e6 for r in rows[1:]]
    print(f"{d:38s} out-(in-cloud)={(out - (inn - cloud * 1.03)) / 1e6:6.2f}MB resent*1514={retr * 1514 / 1e6:5.2f}MB below/node={sum(below) / len(below):.2f}MB")
