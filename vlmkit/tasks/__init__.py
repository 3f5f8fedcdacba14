"""Tasks (registered in TASKS): scienceqa, vqa, caption. The shared contract is in vlmkit.tasks.base."""
