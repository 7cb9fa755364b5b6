import csv, glob, re, sys, os
for pat in sys.argv[1:]:
  for d in sorted(glob.glob(pat)):
    csvs = glob.glob(d + '/n*/nodes-edgeswarm-*.csv')
    if not csvs: print(d, 'no csv'); continue
    s = open(d + '/summary.md').read()
    m = re.search(r'N=\d+: bytes received over all node links / \(N x image\) \| [^|]*\| ([0-9.]+)x', s)
    p = re.search(r'the same above TCP[^|]*\| [^|]*\| ([0-9.]+)x', s)
    last = re.search(r'\| edgeswarm \| \d+ \| ([0-9.]+) ', s)
    rows = list(csv.DictReader(open(csvs[0])))
    f = lambda k: sum(float(r[k] or 0) for r in rows)
    below = [ (float(r['link_in_bytes'] or 0) - float(r['stream_bytes_received'] or 0) - float(r['gossip_bytes_received'] or 0) - float(r['bytes_from_cloud'] or 0))/1e6 for r in rows[1:]]
    print(f"{os.path.basename(d):40s} in={m.group(1) if m else '-'} tcp={p.group(1) if p else '-'} last={last.group(1) if last else '-'} dups={f('duplicate_chunks'):.0f} relab={f('relay_bytes_aborted')/1e6:.2f}MB fromstore={f('relays_completed_from_store') if 'relays_completed_from_store' in rows[0] else '-'} cut={f('cancelled_answers_cut'):.0f} below/node={sum(below)/max(len(below),1):.2f}MB cpu={f('cpu_seconds')/len(rows):.2f}")
