from boneage.cli import app

app(prog_name="boneage")
