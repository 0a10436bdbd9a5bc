"""Cost accounting: FLOPs (fvcore + executed counts), peak memory and timing."""
