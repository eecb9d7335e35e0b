"""The Gradio app's pieces (one module per tab plus shared ones); only `app.py` imports this package."""
