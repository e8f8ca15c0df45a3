"""Images in, pairs out: sources (demo, COCO, WikiArt) → download → safe decode → seeded
(content, style) pairs with pre-resized caches → a torch Dataset with a reproducible order."""
