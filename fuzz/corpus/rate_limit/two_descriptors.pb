
edge*

remote_address10.0.0.9

path/api

userann