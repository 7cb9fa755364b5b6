# table.py RUN_DIR...: T(10), gateway pull, machine CPU (summary.md) and the link phases of each run
import sys,re,subprocess,os
PHASES=os.path.join(os.path.dirname(os.path.abspath(__file__)),'phases.py')
for d in sys.argv[1:]:
    s=open(d+'/summary.md').read()
    m=re.search(r'^\| edgeswarm \| 10 \| ([\d.]+) \| ([\d.]+) \|.*\| (\d+%) \|$',s,re.M)
    ph=subprocess.run(['python3',PHASES,d],capture_output=True,text=True).stdout
    lag=re.search(r'out-in lag ([\d.]+) tail ([\d.]+)',ph)
    print(f"| {os.path.basename(d)} | {m.group(1)} s | {m.group(2)} s | {lag.group(1)} s | {lag.group(2)} s | {m.group(3)} |")
