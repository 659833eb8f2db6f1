"""Count SASS instructions per kernel in a cuobjdump -sass listing (static counts,
by opcode class), to track the decode's instruction budget."""
import re, sys, collections
cur = None
counts = collections.OrderedDict()
for line in open(sys.argv[1]):
    m = re.search(r"Function : (\S+)", line)
    if m:
        cur = m.group(1); counts[cur] = collections.Counter(); continue
    m = re.match(r"\s*/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line)
    if m and cur:
        op = m.group(1).split('.')[0]
        counts[cur][op] += 1
for k, c in counts.items():
    tot = sum(c.values())
    top = ", ".join(f"{o} {n}" for o, n in c.most_common(10))
    print(f"{k}: {tot} instrs; {top}")
