import sys

total = sum(range(1000))
print("ok", total)
sys.exit(0)
