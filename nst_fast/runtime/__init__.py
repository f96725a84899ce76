"""What any long run needs, whatever it trains or optimises: atomic files (files),
Ctrl-C held to a step's end (interrupts), the progress line (progress), the loss
history (history), freed memory kept during a CPU run (heap)."""
