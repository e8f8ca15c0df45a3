"""The report stage: tables, figures, the HTML gallery and the Gatys section."""
